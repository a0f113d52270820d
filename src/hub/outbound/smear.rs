//! The `Date` of outgoing mail, smeared per chat as Delta Chat core does for its own: never two mails of a chat in the same second, lending at most a few seconds from the future.
//!
//! Mail dates have whole seconds, and Delta Chat sorts a chat by them. Mail that left in
//! one second (a Telegram user forwarding five messages, a queue flushed after an outage)
//! is delivered by the MTA in parallel and would show in whatever order it arrived. With a
//! date of its own each keeps its place. Delta Chat core's `SmearedTimestamp` does the same
//! for its own mail, with the same limit. The lending is per chat ([`ChatClocks`]): mails
//! of different chats never compete for a receiver's order, so a busy chat does not use up
//! the seconds another chat's burst needs (one clock for all let a 20-chat catch-up hand
//! every chat the same lent second).
//!
//! Beyond the limit, a chat's mails share a second again and the receiving MTA's delivery
//! order decides (docs/BENCHMARKS.md, "Catch-up").

use std::collections::HashMap;
use std::sync::Mutex;

/// How far ahead of the clock a date may be lent (Delta Chat core's
/// `MAX_SECONDS_TO_LEND_FROM_FUTURE`): a receiver sorts a date from the future at its own
/// "now", so lending more would not keep the order.
pub const MAX_LEND_SECS: i64 = 5;

/// The last date handed out per chat key. A chat whose last date is behind the clock
/// needs no entry (its next date is the clock's), so entries are dropped once they are.
#[derive(Debug, Default)]
pub struct ChatClocks {
    last: Mutex<HashMap<String, i64>>,
}

impl ChatClocks {
    /// A date for a mail of `chat` created at `now`: `now`, or one second after the chat's
    /// last date if that was `now` or later, but never more than [`MAX_LEND_SECS`] ahead.
    pub fn next(&self, chat: &str, now: i64) -> i64 {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() > 1024 {
            last.retain(|_, t| *t >= now);
        }
        let prev = last.get(chat).copied().unwrap_or(i64::MIN);
        let next = now.max(prev.saturating_add(1)).min(now + MAX_LEND_SECS);
        last.insert(chat.to_owned(), next.max(prev));
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_chat_lends_its_own_seconds() {
        let clocks = ChatClocks::default();
        let a: Vec<i64> = (0..3).map(|_| clocks.next("a", 1000)).collect();
        let b: Vec<i64> = (0..3).map(|_| clocks.next("b", 1000)).collect();
        assert_eq!(a, [1000, 1001, 1002]);
        assert_eq!(b, [1000, 1001, 1002], "chat b's burst does not start where chat a's ended");
        let burst: Vec<i64> = (0..8).map(|_| clocks.next("a", 1000)).collect();
        assert_eq!(burst, [1003, 1004, 1005, 1005, 1005, 1005, 1005, 1005], "the lending limit holds per chat");
        assert_eq!(clocks.next("a", 1010), 1010);
    }

    #[test]
    fn mails_in_one_second_get_dates_of_their_own_up_to_the_lending_limit() {
        let clock = ChatClocks::default();
        let dates: Vec<i64> = (0..8).map(|_| clock.next("c", 1000)).collect();
        assert_eq!(dates, [1000, 1001, 1002, 1003, 1004, 1005, 1005, 1005]);
        // Once the clock catches up, dates are the clock's again.
        assert_eq!(clock.next("c", 1010), 1010);
        assert_eq!(clock.next("c", 1011), 1011);
    }

    #[test]
    fn a_date_never_goes_back_within_the_lending_limit() {
        let clock = ChatClocks::default();
        assert_eq!(clock.next("c", 1000), 1000);
        assert_eq!(clock.next("c", 1000), 1001);
        // The system clock stepped back: the lent date still leads, within the limit.
        assert_eq!(clock.next("c", 999), 1002);
    }
}
