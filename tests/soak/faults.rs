//! The faults the soak injects: SIGKILLs of the daemon, each server down for a while (stopped by PID or, for the in-process Bot API double, its socket closed) and back on the same port and data, and a full disk under the store.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use tokio::sync::Mutex;

use crate::proxy::Relay;
use crate::support::deltachat::DeltaChat;
use crate::support::synapse::Synapse;
use crate::support::{Daemon, MailServer};
use crate::tally::{Fault, Side, all_paths, paths_touching};

/// Seconds since `t0`.
pub fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

async fn sleep_until(t0: Instant, at: f64) {
    tokio::time::sleep_until((t0 + Duration::from_secs_f64(at.max(0.0))).into()).await;
}

/// The planned outages: (what, start, length), in seconds from the burst's start.
pub fn outage_plan(warmup: f64, outage: f64, disk: f64, gap: f64) -> (Vec<(&'static str, f64, f64)>, f64) {
    let mut t = warmup;
    let mut plan = Vec::new();
    for (what, len) in
        [("dovecot", outage), ("postfix", outage), ("synapse", outage), ("telegram", outage), ("disk", disk)]
    {
        plan.push((what, t, len));
        t += len + gap;
    }
    (plan, t)
}

/// No kill this long before an outage starts (seconds): longer than the resume goal.
const BEFORE_OUTAGE: f64 = 8.0;

/// `n` kill times in (2, end), none within `quiet` seconds after an outage ends or in its
/// last second (so each return's resume time is measured undisturbed), none in the
/// [`BEFORE_OUTAGE`] seconds before one starts, at least `spacing` apart.
pub fn kill_plan(n: usize, end: f64, outages: &[(&str, f64, f64)], quiet: f64, spacing: f64, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out: Vec<f64> = Vec::new();
    for _ in 0..100_000 {
        if out.len() == n {
            break;
        }
        let t: f64 = rng.random_range(2.0..end);
        let near_return = outages.iter().any(|(_, s, l)| t > s + l - 1.0 && t < s + l + quiet);
        // Nor just before a server goes down: the restarted daemon's paths through it
        // would be cut before they could show their resume, and the kill be charged with
        // the whole outage (the 09:13 run: a kill 2.4 s before Synapse's 60 s "took" 66 s).
        let near_start = outages.iter().any(|(_, s, _)| t > s - BEFORE_OUTAGE && t <= *s);
        if !near_return && !near_start && out.iter().all(|k| (k - t).abs() >= spacing) {
            out.push(t);
        }
    }
    assert_eq!(out.len(), n, "cannot fit {n} kills {spacing} s apart into {end:.0} s; give a longer run");
    out.sort_by(f64::total_cmp);
    out
}

/// The daemon, watched like systemd's Restart=always: killed on plan, restarted, and
/// restarted after any exit of its own (counted).
pub struct Supervised {
    pub daemon: Mutex<Daemon>,
    pub unplanned_exits: Mutex<Vec<(f64, String)>>,
}

impl Supervised {
    /// SIGKILLs at the planned times; returns one fault per kill (back = the respawn).
    pub async fn kill_loop(self: Arc<Self>, t0: Instant, plan: Vec<f64>, seed: u64) -> Vec<Fault> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut faults = Vec::new();
        for (i, at) in plan.into_iter().enumerate() {
            sleep_until(t0, at).await;
            let mut d = self.daemon.lock().await;
            d.kill();
            let down = secs(t0);
            // Down for 0 to 1.5 s (a unit manager's restart delay).
            let pause = rng.random_range(0.0..1.5);
            tokio::time::sleep(Duration::from_secs_f64(pause)).await;
            d.restart();
            let up = secs(t0);
            drop(d);
            eprintln!("soak: [{up:7.1}] SIGKILL {} of the daemon, restarted after {pause:.1} s", i + 1);
            // The daemon's own deliveries (to Matrix and Telegram) show it working again;
            // mail reaching Delta Chat may have left before the kill.
            let paths = vec![
                (Side::DeltaChat, Side::Matrix),
                (Side::DeltaChat, Side::Telegram),
                (Side::Matrix, Side::Telegram),
                (Side::Telegram, Side::Matrix),
            ];
            faults.push(Fault { name: format!("SIGKILL {}", i + 1), down, up, paths });
        }
        faults
    }

    /// Restarts the daemon whenever it exited on its own, until `stop`.
    pub async fn watch(self: Arc<Self>, t0: Instant, stop: tokio_util::sync::CancellationToken) {
        while !stop.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut d = self.daemon.lock().await;
            if !d.is_running() {
                let tail: String = d.log_text().lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                eprintln!("soak: [{:7.1}] the daemon exited on its own; restarting in 1 s: {tail}", secs(t0));
                self.unplanned_exits.lock().await.push((secs(t0), tail));
                d.kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                d.restart();
            }
        }
    }
}

/// What the outages act on.
pub struct Servers {
    pub mail: MailServer,
    pub hs: Arc<Synapse>,
    pub relay: Relay,
    pub store_dir: PathBuf,
    pub dc: Arc<DeltaChat>,
}

impl Servers {
    /// Runs the outage plan; one fault per outage.
    pub async fn outage_loop(&mut self, t0: Instant, plan: Vec<(&'static str, f64, f64)>) -> Vec<Fault> {
        let mut faults = Vec::new();
        for (what, start, len) in plan {
            sleep_until(t0, start).await;
            let down = secs(t0);
            self.down(what).await;
            eprintln!("soak: [{down:7.1}] {what} down for {len:.0} s");
            sleep_until(t0, start + len).await;
            self.up(what).await;
            let up = secs(t0);
            eprintln!("soak: [{up:7.1}] {what} back");
            let paths = match what {
                "dovecot" | "postfix" => paths_touching(Side::DeltaChat),
                "synapse" => paths_touching(Side::Matrix),
                "telegram" => paths_touching(Side::Telegram),
                _ => all_paths(),
            };
            faults.push(Fault { name: format!("{what} down {len:.0} s"), down, up, paths });
        }
        faults
    }

    async fn down(&mut self, what: &str) {
        match what {
            "dovecot" => self.mail.stop_dovecot(),
            "postfix" => self.mail.stop_postfix(),
            "synapse" => {
                let hs = self.hs.clone();
                tokio::task::spawn_blocking(move || hs.stop()).await.expect("stop synapse");
            }
            "telegram" => self.relay.stop().await,
            "disk" => {
                let n = fill(&self.store_dir).expect("fill the store's tmpfs");
                eprintln!("soak: the store's file system is full ({} MiB written)", n >> 20);
            }
            other => panic!("unknown fault {other}"),
        }
    }

    async fn up(&mut self, what: &str) {
        match what {
            "dovecot" => self.mail.start_dovecot(),
            "postfix" => self.mail.start_postfix(),
            "synapse" => {
                let hs = self.hs.clone();
                tokio::task::spawn_blocking(move || hs.restart()).await.expect("restart synapse");
            }
            "telegram" => self.relay.restart().await,
            "disk" => std::fs::remove_file(self.store_dir.join("fill")).expect("free the store's tmpfs"),
            other => panic!("unknown fault {other}"),
        }
        // A phone tells its Delta Chat core when the network is back; so does the soak,
        // so that Delta Chat's own retry pauses do not count against the bridge.
        if matches!(what, "dovecot" | "postfix") {
            self.dc.call("maybe_network", serde_json::json!([])).await;
        }
    }
}

/// Writes zeros into `dir/fill` until the file system says it is full; returns the bytes.
fn fill(dir: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::create(dir.join("fill"))?;
    let mut n = 0u64;
    for size in [1 << 20, 4096, 1] {
        let buf = vec![0u8; size];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(n)
}

/// A tmpfs of `size_mib` mounted at `dir`, unmounted on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size_mib: u64) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0755"), "coi-soak-store"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs on {} failed (the soak needs root)", dir.display());
        Self { dir: dir.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.dir).status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("soak: umount {} failed; lazily detaching it", self.dir.display());
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_kill_lands_just_before_an_outage_or_just_after_a_return() {
        let outages = [("dovecot", 20.0, 60.0), ("postfix", 110.0, 60.0), ("synapse", 200.0, 60.0)];
        for seed in 0..50 {
            for t in kill_plan(12, 290.0, &outages, 15.0, 8.0, seed) {
                for (_, s, l) in outages {
                    assert!(!(t > s - BEFORE_OUTAGE && t <= s), "seed {seed}: a kill at {t} just before {s}");
                    assert!(!(t > s + l - 1.0 && t < s + l + 15.0), "seed {seed}: a kill at {t} just after {}", s + l);
                }
            }
        }
    }
}
