//! Setting aside remote events a bridge cannot handle, so one bad event never blocks the ones behind it: the dead-letter record, a bounded retry count per event, and a panic guard.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};

use crate::RemoteChatId;

/// How often a transiently failing event is tried before it is set aside anyway.
pub const MAX_ATTEMPTS: u32 = 5;

/// The largest raw event kept with a dead letter, in bytes (longer ones are cut).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Why an event was set aside; the `reason` label of the dead-letter metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeadLetterKind {
    /// Handling failed for good (a notice the bot may not post, a refused request).
    Failed,
    /// It failed transiently [`MAX_ATTEMPTS`] times.
    GaveUp,
    /// The remote network sent something that does not parse.
    Unparseable,
    /// Handling it panicked.
    Panicked,
    /// The sender may not do this (another user's edit or redaction).
    Forbidden,
}

impl DeadLetterKind {
    /// The metric label and store value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::GaveUp => "gave_up",
            Self::Unparseable => "unparseable",
            Self::Panicked => "panicked",
            Self::Forbidden => "forbidden",
        }
    }
}

/// An event a bridge set aside, for [`crate::Hub::dead_letter`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The remote chat, when the event names one.
    pub chat: Option<RemoteChatId>,
    /// The remote event's id (Matrix event id, Telegram update id).
    pub event: String,
    pub kind: DeadLetterKind,
    /// What went wrong, for the operator.
    pub reason: String,
    /// The raw event, cut to [`MAX_PAYLOAD_BYTES`].
    pub payload: String,
}

impl DeadLetter {
    pub fn new(chat: Option<RemoteChatId>, event: &str, kind: DeadLetterKind, reason: &str, payload: &str) -> Self {
        let mut cut = payload.len().min(MAX_PAYLOAD_BYTES);
        while !payload.is_char_boundary(cut) {
            cut -= 1;
        }
        Self { chat, event: event.to_owned(), kind, reason: reason.to_owned(), payload: payload[..cut].to_owned() }
    }
}

/// How a bridge's handling of one event failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// May pass (network, a download): try the event again, up to [`MAX_ATTEMPTS`] times.
    Transient(String),
    /// The core could not queue it now (store down, disk full): not the event's fault, so
    /// it is tried again for as long as that lasts and never set aside for it.
    Unavailable(String),
    /// Will not pass: set the event aside now.
    Permanent(DeadLetterKind, String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient(r) => write!(f, "temporary failure: {r}"),
            Self::Unavailable(r) => write!(f, "the core cannot queue it now: {r}"),
            Self::Permanent(k, r) => write!(f, "{}: {r}", k.as_str()),
        }
    }
}

impl From<crate::SubmitError> for Failure {
    /// The hub's "try again" is the core being unavailable; its refusal is for good.
    fn from(e: crate::SubmitError) -> Self {
        match e {
            crate::SubmitError::Retry(r) => Self::Unavailable(r),
            crate::SubmitError::Rejected(r) => Self::Permanent(DeadLetterKind::Failed, r),
        }
    }
}

/// Counts the failed attempts per event (in memory: a restart gives each event
/// [`MAX_ATTEMPTS`] more, which is still finite) and remembers which events were handled,
/// so a transaction sent again does not run its commands twice.
#[derive(Default)]
pub struct Attempts {
    inner: Mutex<AttemptsInner>,
}

#[derive(Default)]
struct AttemptsInner {
    failures: HashMap<String, u32>,
    done: HashSet<String>,
    order: VecDeque<String>,
}

/// How many handled event ids are remembered.
const REMEMBERED: usize = 4096;

impl Attempts {
    fn lock(&self) -> std::sync::MutexGuard<'_, AttemptsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more transient failure of `event`; `true` once it has failed
    /// [`MAX_ATTEMPTS`] times and must be set aside.
    pub fn failed(&self, event: &str) -> bool {
        let mut inner = self.lock();
        if inner.failures.len() > REMEMBERED {
            inner.failures.clear();
        }
        let n = inner.failures.entry(event.to_owned()).or_insert(0);
        *n += 1;
        *n >= MAX_ATTEMPTS
    }

    /// How many times `event` failed so far.
    pub fn failures(&self, event: &str) -> u32 {
        self.lock().failures.get(event).copied().unwrap_or(0)
    }

    /// `event` is done with (handled or set aside).
    pub fn done(&self, event: &str) {
        let mut inner = self.lock();
        inner.failures.remove(event);
        if inner.done.insert(event.to_owned()) {
            inner.order.push_back(event.to_owned());
            if inner.order.len() > REMEMBERED
                && let Some(old) = inner.order.pop_front()
            {
                inner.done.remove(&old);
            }
        }
    }

    /// Whether `event` was done with recently.
    pub fn is_done(&self, event: &str) -> bool {
        self.lock().done.contains(event)
    }
}

/// A future whose panic is caught and returned as its message.
pub struct CatchPanic<F>(Pin<Box<F>>);

/// Runs `fut`, turning a panic inside it into `Err(message)`: one event's bug must not
/// end the task that handles every event.
pub fn catch_panic<F: Future>(fut: F) -> CatchPanic<F> {
    CatchPanic(Box::pin(fut))
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                Poll::Ready(Err(format!("panicked: {message}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_given_up_after_max_attempts() {
        let a = Attempts::default();
        for _ in 1..MAX_ATTEMPTS {
            assert!(!a.failed("$e"));
        }
        assert!(a.failed("$e"), "the last attempt sets it aside");
        assert_eq!(a.failures("$other"), 0);
        a.done("$e");
        assert!(a.is_done("$e"));
        assert_eq!(a.failures("$e"), 0, "done forgets the count");
    }

    #[test]
    fn done_events_are_remembered_boundedly() {
        let a = Attempts::default();
        for i in 0..=REMEMBERED {
            a.done(&i.to_string());
        }
        assert!(!a.is_done("0"), "the oldest is forgotten");
        assert!(a.is_done(&REMEMBERED.to_string()));
    }

    #[test]
    fn payloads_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_PAYLOAD_BYTES);
        let d = DeadLetter::new(None, "1", DeadLetterKind::Failed, "r", &long);
        assert!(d.payload.len() <= MAX_PAYLOAD_BYTES && d.payload.len() >= MAX_PAYLOAD_BYTES - 1);
    }

    #[tokio::test]
    async fn a_panic_is_caught_and_named() {
        let ok = catch_panic(async { 7 }).await;
        assert_eq!(ok, Ok(7));
        let r = catch_panic(async {
            let v: Vec<u8> = Vec::new();
            v[3]
        })
        .await;
        assert!(r.unwrap_err().contains("index out of bounds"));
    }
}
