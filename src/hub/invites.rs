//! Personal invites: making one ([`hand_out`]), and how often one person may ask ([`InviteLimiter`]): each costs a store write and a QR render, and anyone in a portal may ask, so the hub allows [`MAX_PER_WINDOW`] per (bridge, person) in [`WINDOW`], for every bridge at once.
//!
//! The count is in memory, per account: a restart forgets it, which only lets someone ask
//! [`MAX_PER_WINDOW`] more times. People whose last request is older than [`WINDOW`] are
//! dropped once the table holds [`PRUNE_AT`] people, so a crowd of askers cannot grow it
//! for good.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coi_bridge_api::{BridgeId, CommandReply, Person, RemoteChatId, SubmitError};

use crate::coi::securejoin_link::InviteGroup;
use crate::hub::e2ee::Identity;
use crate::hub::securejoin::invite_for;
use crate::hub::submit::{retry_or_reject, store_err};
use crate::store::migration::{PersonalInviteRow, Seen};
use crate::store::{Chat, Store};

/// Personal invites one person may have from one bridge in [`WINDOW`].
pub const MAX_PER_WINDOW: usize = 3;

/// The window [`MAX_PER_WINDOW`] counts in.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);

/// The number of people at which those not seen in [`WINDOW`] are dropped.
const PRUNE_AT: usize = 1024;

/// Whether a request may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Counted: hand out the invite.
    Allowed,
    /// Too many lately; the next one is allowed after this long.
    Refused { again_in: Duration },
}

/// The recent personal invites of each (bridge, person).
#[derive(Debug)]
pub struct InviteLimiter {
    max: usize,
    window: Duration,
    asked: Mutex<HashMap<(String, String), VecDeque<Instant>>>,
}

impl Default for InviteLimiter {
    fn default() -> Self {
        Self::new(MAX_PER_WINDOW, WINDOW)
    }
}

impl InviteLimiter {
    pub fn new(max: usize, window: Duration) -> Self {
        Self { max: max.max(1), window, asked: Mutex::default() }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), VecDeque<Instant>>> {
        // A panic elsewhere while counting leaves a usable table.
        self.asked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `person` of `bridge` asks for an invite at `now`: counted and allowed, or refused.
    pub fn ask(&self, bridge: &str, person: &str, now: Instant) -> Verdict {
        let window = self.window;
        let recent = |t: &Instant| now.saturating_duration_since(*t) < window;
        let mut table = self.table();
        if table.len() >= PRUNE_AT {
            table.retain(|_, times| times.back().is_some_and(recent));
        }
        let times = table.entry((bridge.to_owned(), person.to_owned())).or_default();
        while times.front().is_some_and(|t| !recent(t)) {
            times.pop_front();
        }
        if times.len() >= self.max {
            let oldest = times.front().copied().unwrap_or(now);
            return Verdict::Refused { again_in: window.saturating_sub(now.saturating_duration_since(oldest)) };
        }
        times.push_back(now);
        Verdict::Allowed
    }

    /// Gives back the request counted at `at` (the invite could not be made after all, and
    /// the bridge asks again).
    pub fn give_back(&self, bridge: &str, person: &str, at: Instant) {
        let mut table = self.table();
        if let Some(times) = table.get_mut(&(bridge.to_owned(), person.to_owned()))
            && let Some(i) = times.iter().rposition(|t| *t == at)
        {
            times.remove(i);
        }
    }

    /// The people counted now (for tests and the pruning's bound).
    pub fn people(&self) -> usize {
        self.table().len()
    }
}

/// The answer to a refused request, `again_in` rounded up to whole minutes.
pub fn refusal_text(again_in: Duration) -> String {
    let minutes = again_in.as_secs().div_ceil(60).max(1);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    format!(
        "You asked for an invite a moment ago; it is above. Your earlier invites stay valid. You can ask for another \
         in {minutes} {unit}."
    )
}

/// A personal invite for `person` of the remote chat `chat` on `from`, to its portal's group
/// `c`: `person` is noted as a member there, and the invite is recorded, so whoever
/// completes it is paired with them.
pub async fn hand_out(
    store: &dyn Store,
    identity: &Identity,
    display_name: &str,
    from: &BridgeId,
    chat: &RemoteChatId,
    person: &Person,
    c: &Chat,
) -> Result<CommandReply, SubmitError> {
    let now = chrono::Utc::now().timestamp();
    store
        .note_remote_person(from.as_str(), chat.as_str(), person.id.as_str(), &person.display_name, Seen::Joined, now)
        .await
        .map_err(store_err)?;
    let group = InviteGroup { id: c.key.clone(), name: c.name.clone() };
    let invite = invite_for(store, identity, display_name, Some(group)).await.map_err(retry_or_reject)?;
    let row = PersonalInviteRow {
        auth: invite.auth.clone(),
        bridge: from.as_str().to_owned(),
        remote_user: person.id.as_str().to_owned(),
        remote_chat: Some(chat.as_str().to_owned()),
        created_at: now,
    };
    store.add_personal_invite(&row).await.map_err(store_err)?;
    let link = invite.render();
    tracing::info!(bridge = %from, chat = %chat, user = %person.id, "personal invite handed out");
    let qr_png = crate::qr::png(&link).map_err(|e| tracing::warn!(error = %e, "no QR code for the invite")).ok();
    Ok(CommandReply {
        text: format!(
            "Your personal invite to the COI group \"{}\", {}. Open it in Delta Chat (or scan the QR code); once \
             you have joined, the group sees that you moved. It is yours: do not pass it on.\n{link}",
            c.name, person.display_name
        ),
        link: Some(link),
        qr_png,
    })
}

/// The group portals of bridge `from` that `person` is in (seen joining or posting there,
/// and not gone since), for a personal invite asked for outside them (in a direct room with
/// the bot). A private chat's portal (`Name (Telegram)`) is no group they could join.
pub async fn groups_of(
    store: &dyn Store,
    from: &BridgeId,
    person: &Person,
) -> crate::store::StoreResult<Vec<(RemoteChatId, Chat)>> {
    let mut found = Vec::new();
    for portal in store.portals().await?.into_iter().filter(|p| p.bridge == from.as_str()) {
        let Some(chat) = store.chat(portal.chat_id).await? else { continue };
        if chat.kind != crate::store::ChatKind::Group
            || crate::hub::private::is_private_chat(store, &portal, &chat).await?
        {
            continue;
        }
        let people = store.remote_people(from.as_str(), &portal.remote_chat).await?;
        if people.iter().any(|p| p.remote_user == person.id.as_str() && p.left_at.is_none()) {
            found.push((RemoteChatId(portal.remote_chat), chat));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_per_person_in_ten_minutes_then_again_once_the_oldest_ages_out() {
        let limiter = InviteLimiter::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in [0, 10, 20] {
            assert_eq!(limiter.ask("telegram", "42", at(s)), Verdict::Allowed, "request at {s} s");
        }
        assert_eq!(
            limiter.ask("telegram", "42", at(30)),
            Verdict::Refused { again_in: Duration::from_secs(570) },
            "the fourth in ten minutes"
        );
        // Others are counted apart: another person, the same person on another bridge.
        assert_eq!(limiter.ask("telegram", "43", at(30)), Verdict::Allowed);
        assert_eq!(limiter.ask("matrix", "42", at(30)), Verdict::Allowed);
        // A refused request does not count: once the first ages out, one more may go.
        assert!(matches!(limiter.ask("telegram", "42", at(599)), Verdict::Refused { .. }));
        assert_eq!(limiter.ask("telegram", "42", at(600)), Verdict::Allowed);
        assert!(matches!(limiter.ask("telegram", "42", at(601)), Verdict::Refused { .. }));
    }

    #[test]
    fn a_request_given_back_is_not_counted() {
        let limiter = InviteLimiter::new(1, WINDOW);
        let t0 = Instant::now();
        assert_eq!(limiter.ask("matrix", "@n:hs", t0), Verdict::Allowed);
        limiter.give_back("matrix", "@n:hs", t0);
        assert_eq!(limiter.ask("matrix", "@n:hs", t0 + Duration::from_secs(1)), Verdict::Allowed);
        assert!(matches!(limiter.ask("matrix", "@n:hs", t0 + Duration::from_secs(2)), Verdict::Refused { .. }));
    }

    #[test]
    fn people_not_seen_in_the_window_are_dropped_when_the_table_is_full() {
        let limiter = InviteLimiter::default();
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            limiter.ask("telegram", &i.to_string(), t0);
        }
        assert_eq!(limiter.people(), PRUNE_AT);
        // One more, after the window: the old ones go.
        limiter.ask("telegram", "late", t0 + WINDOW);
        assert_eq!(limiter.people(), 1);
    }

    #[test]
    fn the_refusal_says_when_to_ask_again() {
        assert!(refusal_text(Duration::from_secs(570)).contains("in 10 minutes"));
        assert!(refusal_text(Duration::from_secs(1)).contains("in 1 minute."));
        assert!(refusal_text(Duration::ZERO).starts_with("You asked for an invite a moment ago; it is above."));
    }
}
