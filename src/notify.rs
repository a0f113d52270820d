//! systemd's service notification protocol: READY=1, STOPPING=1 and WATCHDOG=1 datagrams to `$NOTIFY_SOCKET` (nothing without it).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where systemd (`Type=notify`) listens; `None` when not started by systemd.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (with `WATCHDOG_PID`, if set, naming
    /// this process). A socket that cannot be used is logged and ignored.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| match open(&path) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(socket = ?path, error = %e, "NOTIFY_SOCKET is set but cannot be used; not notifying systemd");
                None
            }
        });
        let for_us = std::env::var("WATCHDOG_PID").map_or(true, |p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && for_us)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// How often to send WATCHDOG=1: half of `WatchdogSec`, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref().and(self.watchdog).map(|w| w / 2)
    }

    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=running");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// A path, or `@name` for Linux's abstract namespace (what systemd uses by default).
fn open(path: &std::ffi::OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_bytes();
    let addr = match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)?
        }
        _ => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    // Blocking, so READY=1 is not lost to a full queue, but never for long.
    sock.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok((sock, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_states_to_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let n =
            Notifier { socket: Some(open(path.as_os_str()).expect("open")), watchdog: Some(Duration::from_secs(30)) };
        n.ready();
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=running");
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
    }

    #[test]
    fn abstract_names_are_understood() {
        let name = format!("@coi-bridge-test-{}", std::process::id());
        let listener = {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = SocketAddr::from_abstract_name(&name.as_bytes()[1..]).expect("addr");
            UnixDatagram::bind_addr(&addr).expect("bind")
        };
        let n = Notifier { socket: Some(open(std::ffi::OsStr::new(&name)).expect("open")), watchdog: None };
        n.stopping();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping");
        assert_eq!(n.watchdog_interval(), None);
    }
}
