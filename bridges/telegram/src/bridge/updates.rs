//! One `getUpdates` answer, worked through in order without ever wedging: an update that fails for good (or panics, or does not parse) is set aside as a dead letter and the offset moves past it; one that fails transiently is fetched again, at most [`MAX_ATTEMPTS`] times, then set aside too.

use std::time::Duration;

use coi_bridge_api::deadletter::{Attempts, MAX_ATTEMPTS, catch_panic};
use coi_bridge_api::{BridgeContext, DeadLetter, DeadLetterKind, Failure, RemoteChatId, SubmitError};
use serde_json::Value;
use teloxide::types::{ChatId, Update, UpdateKind, UserId};

use super::TelegramBridge;

/// The longest pause before a transiently failing update is fetched again.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// How soon an update is fetched again while the core cannot queue it (store down): it
/// waits as long as that lasts and is never set aside for it.
const UNAVAILABLE_PAUSE: Duration = Duration::from_secs(2);

/// One update of an answer: parsed, or the raw JSON teloxide could not read.
pub enum Item {
    Parsed(Box<Update>),
    Broken { id: i64, raw: Value, error: String },
}

impl Item {
    pub fn id(&self) -> i64 {
        match self {
            Self::Parsed(u) => i64::from(u.id.0),
            Self::Broken { id, .. } => *id,
        }
    }
}

/// The updates of a `getUpdates` answer that teloxide refused as a whole (one update it
/// cannot read spoils the batch): each one parsed on its own. `None` when the answer is
/// not a list of updates at all.
pub fn split_batch(raw: &str) -> Option<Vec<Item>> {
    let v: Value = serde_json::from_str(raw).ok()?;
    let list = v.get("result")?.as_array()?;
    let mut items: Vec<Item> = list
        .iter()
        .filter_map(|u| {
            let id = u["update_id"].as_i64()?;
            Some(match serde_json::from_value::<Update>(u.clone()) {
                Ok(parsed) => Item::Parsed(Box::new(parsed)),
                Err(e) => Item::Broken { id, raw: u.clone(), error: e.to_string() },
            })
        })
        .collect();
    items.sort_by_key(Item::id);
    Some(items)
}

/// What to do after one update.
pub enum Step {
    /// Done with it (handled or set aside): move the offset past it.
    Next,
    /// Not done: keep the offset and fetch it again after this pause.
    Again(Duration),
}

impl TelegramBridge {
    /// Handles one update durably (see the module doc).
    pub(super) async fn process(&self, cx: &BridgeContext, me: UserId, item: Item, attempts: &Attempts) -> Step {
        let key = item.id().to_string();
        let (outcome, chat, raw) = match item {
            Item::Broken { raw, error, .. } => (
                Err(Failure::Permanent(DeadLetterKind::Unparseable, error)),
                raw["message"]["chat"]["id"].as_i64(),
                raw,
            ),
            Item::Parsed(update) if matches!(update.kind, UpdateKind::Error(_)) => {
                let reason = "an update of a kind the bridge asked for that does not parse".to_owned();
                (Err(Failure::Permanent(DeadLetterKind::Unparseable, reason)), None, Value::Null)
            }
            Item::Parsed(update) => {
                let chat = update.chat().map(|c| c.id.0);
                let raw = serde_json::to_value(&*update).unwrap_or(Value::Null);
                let outcome = match catch_panic(self.handle(cx, me, *update)).await {
                    Ok(r) => r.map_err(Failure::from),
                    Err(panic) => Err(Failure::Permanent(DeadLetterKind::Panicked, panic)),
                };
                (outcome, chat, raw)
            }
        };
        let (kind, reason) = match outcome {
            Ok(()) => {
                attempts.done(&key);
                return Step::Next;
            }
            Err(Failure::Unavailable(reason)) => {
                tracing::warn!(bridge = %cx.id, update = %key, error = %reason, retry_in = ?UNAVAILABLE_PAUSE, "the core cannot queue Telegram updates now; will fetch it again");
                return Step::Again(UNAVAILABLE_PAUSE);
            }
            Err(Failure::Transient(reason)) => {
                if !attempts.failed(&key) {
                    let attempt = attempts.failures(&key);
                    let pause = (Duration::from_secs(1) * 2u32.pow(attempt.saturating_sub(1))).min(MAX_PAUSE);
                    tracing::warn!(bridge = %cx.id, update = %key, attempt, max = MAX_ATTEMPTS, error = %reason, retry_in = ?pause, "Telegram update not queued; will fetch it again");
                    return Step::Again(pause);
                }
                (DeadLetterKind::GaveUp, format!("failed {MAX_ATTEMPTS} times, last: {reason}"))
            }
            Err(Failure::Permanent(kind, reason)) => (kind, reason),
        };
        let letter = DeadLetter::new(chat.map(|c| RemoteChatId(c.to_string())), &key, kind, &reason, &raw.to_string());
        match cx.hub.dead_letter(&cx.id, letter).await {
            Ok(()) => {}
            Err(SubmitError::Retry(e)) => {
                tracing::warn!(bridge = %cx.id, update = %key, error = %e, "could not set the update aside; will fetch it again");
                return Step::Again(Duration::from_secs(1));
            }
            Err(SubmitError::Rejected(e)) => {
                tracing::warn!(bridge = %cx.id, update = %key, error = %e, "dead letter refused")
            }
        }
        attempts.done(&key);
        // Say so where the bot may talk (an allowed chat), so the sender knows.
        if let Some(chat) = chat
            && matches!(self.allowed(cx, chat).await, Ok(true))
        {
            let short: String = reason.chars().take(300).collect();
            let text = format!("A Telegram update could not be bridged to COI and was set aside ({short}).");
            self.say(ChatId(chat), &text).await;
        }
        Step::Next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_with_an_unreadable_update_is_split() {
        let raw = r#"{"ok":true,"result":[
            {"update_id":9,"message":{"message_id":1,"date":1,"chat":{"id":-5,"type":"group","title":"G"},"text":"hi"}},
            {"update_id":8,"message":{"message_id":"not a number"}},
            {"no_update_id":true}
        ]}"#;
        let items = split_batch(raw).expect("a list");
        assert_eq!(items.iter().map(Item::id).collect::<Vec<_>>(), vec![8, 9], "in order; no id, no item");
        assert!(matches!(&items[1], Item::Parsed(_)));
        assert!(split_batch("not json").is_none());
    }
}
