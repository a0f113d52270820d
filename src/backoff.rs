//! Exponential backoff with jitter, for reconnects and delivery retries, and the spread of periodic work; never a busy loop.

use std::time::Duration;

use rand::Rng as _;

/// The pause before attempt `attempt + 1`: `base * 2^attempt`, capped at `max`, with
/// ±20 % jitter so that many clients do not retry in step.
pub fn delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(31)));
    let capped = exp.min(max).max(Duration::from_millis(100));
    let jitter = rand::rng().random_range(0.8..=1.2);
    capped.mul_f64(jitter).min(max.mul_f64(1.2))
}

/// A backoff that remembers how many attempts failed in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// The next pause; each call doubles the following one, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// After a success, start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How long a worker keeps trying to write down a delivery the remote side already has.
pub const RECORD_FOR: Duration = Duration::from_secs(300);

/// The longest pause between two tries of such a write (see [`until_ok`]).
pub const RECORD_RETRY_MAX: Duration = Duration::from_secs(1);

/// Runs `op` until it succeeds, pausing 0.5 s then 1 s between tries, for at most
/// `within`; the last error if it never did. For recording a delivery that already
/// happened: giving up at once leaves the row due, so the next round sends it again (a
/// duplicate where the network has no idempotency key, Telegram), and what refuses the
/// write (a full disk, a locked store) usually passes. A local write is cheap to try, and
/// the chat's next message waits for it: the soak saw a 10 s pause cap hold a chat 10 s
/// after the disk had room again.
pub async fn until_ok<T, E, F, Fut>(within: Duration, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut backoff = Backoff::new(Duration::from_millis(500), RECORD_RETRY_MAX);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let pause = backoff.next_delay();
                if tokio::time::Instant::now() + pause > deadline {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// How often a pause after a refused connection looks whether the server is back.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// True if `e` (or an error under it) is a refused TCP connection: nothing listens on the
/// server's port, it is down or restarting.
pub fn is_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Waits out `pause`, but ends it as soon as `host:port` accepts a TCP connection (looked
/// at every [`PROBE_EVERY`]). For a server that refused connections: a backoff that grew
/// during a long outage would otherwise keep the bridge away for up to its cap after the
/// server came back. The probe is a bare connect, closed at once.
pub async fn pause_until_reachable(pause: Duration, host: &str, port: u16) {
    let deadline = tokio::time::Instant::now() + pause;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(PROBE_EVERY)).await;
        let probe = tokio::time::timeout(PROBE_EVERY, tokio::net::TcpStream::connect((host, port))).await;
        if matches!(probe, Ok(Ok(_))) {
            tracing::debug!(host, port, "the server accepts connections again; ending the pause");
            return;
        }
    }
}

/// The pause of a periodic look or renewal: between half and all of `every`, at random,
/// so that the accounts of one daemon, which start together, do not act together (1,000
/// accounts renewing IDLE and looking at their stores in the same second made half of
/// them reconnect, #12).
pub fn spread(every: Duration) -> Duration {
    every.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(800) && d[0] <= Duration::from_millis(1200));
        assert!(d[3] >= Duration::from_millis(6400) && d[3] <= Duration::from_millis(9600));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(72)));
        assert!(d[9] >= Duration::from_secs(48));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }

    /// A pause of an hour after a refused connection ends once the port listens again.
    #[tokio::test]
    async fn a_refused_pause_ends_when_the_server_is_back() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(anyhow::Error::from);
        let refused = refused.expect_err("nothing listens yet");
        assert!(is_refused(&refused.context("IMAP: cannot connect")));
        let back = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("rebind")
        });
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            pause_until_reachable(Duration::from_secs(3600), "127.0.0.1", port),
        )
        .await;
        assert!(waited.is_ok(), "the pause outlived the server's return");
        drop(back.await);
    }

    /// A write the store refuses a few times is tried again until it passes.
    #[tokio::test]
    async fn until_ok_retries_until_the_write_passes() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let r: Result<u32, &str> = until_ok(Duration::from_secs(60), || async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 3 { Err("database or disk is full") } else { Ok(n) }
        })
        .await;
        assert_eq!(r, Ok(3));
        let r: Result<(), &str> = until_ok(Duration::from_millis(100), || async { Err("still full") }).await;
        assert_eq!(r, Err("still full"), "bounded");
    }

    #[test]
    fn never_zero() {
        assert!(delay(Duration::ZERO, Duration::from_secs(1), 0) >= Duration::from_millis(80));
    }

    #[test]
    fn spread_stays_within_half_and_all_and_varies() {
        let every = Duration::from_secs(600);
        let pauses: Vec<_> = (0..200).map(|_| spread(every)).collect();
        assert!(pauses.iter().all(|p| *p >= every / 2 && *p <= every), "{pauses:?}");
        let distinct: std::collections::HashSet<_> = pauses.iter().map(|p| p.as_millis()).collect();
        assert!(distinct.len() > 100, "pauses spread over the range: {} distinct of 200", distinct.len());
    }
}
