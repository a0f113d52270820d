//! Exponential backoff with jitter, for reconnects and delivery retries; never a busy loop.

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

    #[test]
    fn never_zero() {
        assert!(delay(Duration::ZERO, Duration::from_secs(1), 0) >= Duration::from_millis(80));
    }
}
