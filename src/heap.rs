//! Gives the system back memory that glibc's allocator keeps after a burst: every 10 s it compares what the process holds with what is in use, and trims when the difference grew by a quarter of the heap (8 to 32 MB), or by 8 MB once the process is quiet.
//!
//! glibc keeps freed memory resident in its arenas for reuse; only `malloc_trim` returns
//! the free pages inside a heap. A daemon starting 1,000 accounts frees hundreds of
//! megabytes at once (key loads, TLS handshakes, migrations, a store connection per
//! account opened and closed), and without a trim that memory stays resident for the
//! process's life: 1,000 idle accounts held about 1 GB of which 20 % was in use (#12).
//! A trim walks every free chunk of every arena and costs up to seconds of CPU on a
//! large, fragmented heap (a trim every minute measured 2.2 s each at 1,000 accounts),
//! so it runs only when the free-but-resident memory grew by [`growth`] since the last
//! one (a quarter of the heap in use, between 8 and 32 MB: a small daemon's cheap trim
//! after a warm-up, a large one's walk only for 32 MB), on a blocking thread, never on an
//! async worker. An idle daemon trims once after
//! its start and then not again until traffic leaves more behind.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the process's memory is looked at (one read of /proc/self/statm and one
/// walk of the allocator's free lists). Every
/// 10 s, so the start's frees go back soon after the accounts idle: at 30 s, 1,000
/// accounts sat at 927 MB for the first 40 s of their idle window before the one trim.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// How much the memory held but not in use must grow after a trim before the next one,
/// at most: a large heap (1,000 accounts) is walked only for this much.
pub const GROWTH: u64 = 32 * 1024 * 1024;

/// ... and at least: a small daemon (one account, a few portals) trims after a burst
/// that left this much behind; its heap is walked in well under a millisecond.
pub const MIN_GROWTH: u64 = 8 * 1024 * 1024;

/// The growth worth a trim for a heap with `in_use` bytes in use: a quarter of it,
/// between [`MIN_GROWTH`] and [`GROWTH`] (a trim's cost grows with the heap).
pub fn growth(in_use: u64) -> u64 {
    (in_use / 4).clamp(MIN_GROWTH, GROWTH)
}

/// What the process holds and what its allocator has in use, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Resident memory (RSS): heap, stacks and the binary's file pages.
    pub resident: u64,
    /// Bytes the allocator has handed out and not been given back (heap and mmapped).
    pub in_use: u64,
}

impl Usage {
    /// Resident but not in use: freed memory the allocator keeps, plus the stacks and file
    /// pages, which change little.
    pub fn slack(&self) -> u64 {
        self.resident.saturating_sub(self.in_use)
    }
}

/// How little two looks may differ (resident and in use) for the process to count as quiet.
pub const QUIET: u64 = 1024 * 1024;

/// Trims when the slack grew by more than [`growth`] over the slack right after the last
/// trim (`floor`), or when there was none yet (`None`: the start's frees). A quiet process
/// (`previous`, the look before, the same within [`QUIET`]) also gives back what is left
/// over [`MIN_GROWTH`]: the frees that came after a trim in the middle of a burst (1,000
/// accounts kept 27 MB of it for good, 310 MB where a later trim left 283), once, since
/// the trim makes that slack the new floor.
pub fn should_trim(now: Usage, previous: Option<Usage>, floor: Option<u64>) -> bool {
    let growth = growth(now.in_use);
    let quiet =
        previous.is_some_and(|p| p.resident.abs_diff(now.resident) <= QUIET && p.in_use.abs_diff(now.in_use) <= QUIET);
    match floor {
        None => now.slack() > growth,
        Some(f) => now.slack() > f.saturating_add(growth) || (quiet && now.slack() > f.saturating_add(MIN_GROWTH)),
    }
}

/// Reads the process's usage; `None` where the allocator cannot say (not glibc).
pub fn usage() -> Option<Usage> {
    imp::usage()
}

/// Returns the allocator's free pages to the system; `false` if it had none to give or
/// cannot (not glibc). Blocking: seconds on a large heap.
pub fn trim() -> bool {
    imp::trim()
}

/// Looks every [`CHECK_EVERY`] and trims when [`should_trim`] says so, until `token`.
pub async fn run(token: CancellationToken, trims: prometheus::IntCounter) {
    let mut floor = None;
    let mut previous = None;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let Ok(Some(before)) = tokio::task::spawn_blocking(usage).await else {
            tracing::debug!("heap: this allocator cannot report its usage; not trimming");
            return;
        };
        let trim_now = should_trim(before, previous, floor);
        previous = Some(before);
        if !trim_now {
            continue;
        }
        let started = std::time::Instant::now();
        let after = tokio::task::spawn_blocking(|| {
            trim();
            usage()
        })
        .await;
        let Ok(Some(after)) = after else { return };
        trims.inc();
        floor = Some(after.slack());
        previous = Some(after);
        tracing::info!(
            resident_before_mb = before.resident >> 20,
            resident_after_mb = after.resident >> 20,
            in_use_mb = after.in_use >> 20,
            took_ms = started.elapsed().as_millis() as u64,
            "heap: returned freed memory to the system"
        );
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::Usage;

    pub fn usage() -> Option<Usage> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf and mallinfo2 take no pointers and only read process state.
        let (page, info) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::mallinfo2()) };
        let page = u64::try_from(page).ok()?;
        Some(Usage { resident: pages * page, in_use: (info.uordblks + info.hblkhd) as u64 })
    }

    pub fn trim() -> bool {
        // SAFETY: malloc_trim takes the allocator's own locks; 0 keeps no pad at the top.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn usage() -> Option<super::Usage> {
        None
    }

    pub fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn at(resident: u64, in_use: u64) -> Usage {
        Usage { resident: resident * MB, in_use: in_use * MB }
    }

    #[test]
    fn trims_after_the_start_then_only_when_the_slack_grows() {
        assert!(!should_trim(at(190, 160), None, None), "30 MB of slack at start, a 160 MB heap: not worth a walk");
        assert!(should_trim(at(1000, 300), None, None), "the start freed 700 MB");
        let floor = Some(at(350, 300).slack());
        assert!(!should_trim(at(360, 300), None, floor), "10 MB more: not worth a walk of the heap");
        assert!(should_trim(at(340, 250), None, floor), "less in use, the same resident: 40 MB more slack");
        assert!(should_trim(at(400, 300), None, floor), "50 MB more slack than after the last trim");
    }

    #[test]
    fn a_small_daemon_trims_after_a_small_burst() {
        // One account with a few portals: ~5 MB in use, ~25 MB of it the binary's pages.
        let floor = Some(at(30, 5).slack());
        assert!(!should_trim(at(34, 5), None, floor), "4 MB more: below the least growth");
        assert!(should_trim(at(39, 5), None, floor), "a warm-up left 9 MB behind: a cheap trim gives it back");
        assert_eq!(growth(5 * MB), MIN_GROWTH);
        assert_eq!(growth(100 * MB), 25 * MB);
        assert_eq!(growth(1000 * MB), GROWTH, "a large heap waits for as much as before");
    }

    #[test]
    fn a_quiet_process_gives_back_what_came_after_a_trim_once() {
        // 1,000 accounts: trimmed during the start's tail, then 25 MB more freed, then quiet.
        let floor = Some(at(310, 140).slack());
        let busy = at(320, 130);
        assert!(!should_trim(at(335, 140), Some(busy), floor), "25 MB over the floor, still moving: wait");
        assert!(should_trim(at(335, 140), Some(at(335, 140)), floor), "the same twice: quiet, give it back");
        assert!(!should_trim(at(315, 140), Some(at(315, 140)), floor), "5 MB over the floor: not worth a walk");
        assert!(
            !should_trim(at(160, 140), Some(at(160, 140)), None),
            "before any trim, only the start's rule (20 MB: no)"
        );
    }

    /// Memory freed by many threads stays resident until a trim, and `trim` gives it
    /// back. Runs alone in a child process (this test binary, filtered to it): other
    /// tests allocating meanwhile would blur the figures.
    #[test]
    fn a_trim_returns_what_threads_freed() {
        if !crate::testing::alone("heap::tests::a_trim_returns_what_threads_freed") {
            return;
        }
        let base = usage().expect("glibc reports its usage");
        // Eight threads each allocate 32 MB in small blocks, keep every 8th (so the
        // heap stays fragmented, as a daemon's does, and no free run is large enough for
        // glibc to give back by itself) and free the rest.
        // All eight run at once, each in an arena of its own, as a daemon's threads do.
        let ready = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let ready = ready.clone();
                std::thread::spawn(move || {
                    let blocks: Vec<Vec<u8>> = (0..32 * 1024).map(|i| vec![i as u8; 1024]).collect();
                    ready.wait();
                    blocks.into_iter().step_by(8).collect::<Vec<_>>()
                })
            })
            .collect();
        let kept: Vec<Vec<Vec<u8>>> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
        let before = usage().expect("usage");
        assert!(
            before.slack() > base.slack() + 128 * MB,
            "the freed memory stayed resident: slack {} MB, at start {} MB",
            before.slack() / MB,
            base.slack() / MB
        );
        assert!(should_trim(before, None, Some(base.slack())));
        trim();
        let after = usage().expect("usage");
        assert!(
            after.slack() + 64 * MB < before.slack(),
            "a trim gave back {} MB of {} MB slack",
            (before.slack() - after.slack().min(before.slack())) / MB,
            before.slack() / MB
        );
        assert_eq!(kept.iter().map(Vec::len).sum::<usize>(), 8 * 4096, "the kept blocks are still there");
    }
}
