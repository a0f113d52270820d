//! The `Date` of outgoing mail, smeared as Delta Chat core does: never two mails in the same second, lending at most a few seconds from the future.
//!
//! Mail dates have whole seconds, and Delta Chat sorts a chat by them. Mail that left in
//! one second (a Telegram user forwarding five messages, a queue flushed after an outage)
//! is delivered by the MTA in parallel and would show in whatever order it arrived. With a
//! date of its own each keeps its place. Delta Chat core's `SmearedTimestamp` does the same
//! for its own mail, with the same limit.

use std::sync::atomic::{AtomicI64, Ordering};

/// How far ahead of the clock a date may be lent (Delta Chat core's
/// `MAX_SECONDS_TO_LEND_FROM_FUTURE`): a receiver sorts a date from the future at its own
/// "now", so lending more would not keep the order.
pub const MAX_LEND_SECS: i64 = 5;

#[derive(Debug, Default)]
pub struct SmearedClock {
    /// The last date handed out (Unix seconds).
    last: AtomicI64,
}

impl SmearedClock {
    /// A date for a mail created at `now`: `now`, or one second after the last date if
    /// that was `now` or later, but never more than [`MAX_LEND_SECS`] ahead of `now`.
    pub fn next(&self, now: i64) -> i64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1).min(now + MAX_LEND_SECS);
            match self.last.compare_exchange_weak(last, next.max(last), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mails_in_one_second_get_dates_of_their_own_up_to_the_lending_limit() {
        let clock = SmearedClock::default();
        let dates: Vec<i64> = (0..8).map(|_| clock.next(1000)).collect();
        assert_eq!(dates, [1000, 1001, 1002, 1003, 1004, 1005, 1005, 1005]);
        // Once the clock catches up, dates are the clock's again.
        assert_eq!(clock.next(1010), 1010);
        assert_eq!(clock.next(1011), 1011);
    }

    #[test]
    fn a_date_never_goes_back_within_the_lending_limit() {
        let clock = SmearedClock::default();
        assert_eq!(clock.next(1000), 1000);
        assert_eq!(clock.next(1000), 1001);
        // The system clock stepped back: the lent date still leads, within the limit.
        assert_eq!(clock.next(999), 1002);
    }
}
