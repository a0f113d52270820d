//! Who has moved: a portal's migration status from the people its bridge has seen, the pairings and the COI chat's members, and the "this group can be closed" announcement, made once.
//!
//! - **Moved**: a remote person paired with a COI address that is a member of the portal's
//!   COI chat (or, for a 1:1 portal, is the chat's peer).
//! - **Only on the remote side**: seen there, not gone, not moved.
//! - **Left since moving**: moved, and gone from the remote chat since.
//! - **Active, not moved**: posted in the remote chat in the last [`ACTIVE_DAYS`] days, not
//!   gone, not moved: the people the group still waits for.
//! - **Remote members**: how many people the remote chat has as its network counts them,
//!   when the bridge can count ([`coi_bridge_api::member_count_key`]), else the people seen;
//!   only the people seen are named.
//! - **Closable**: at least one person active in the last [`ACTIVE_DAYS`] days, and every
//!   one of them has moved. The bridge then says so once, in the COI chat and through it in
//!   every portal ([`announce_if_closable`]).

use crate::coi::ChatMessage;
use crate::hub::outbound::{Outbound, QueueError};
use crate::metrics::Metrics;
use crate::store::migration::{MigrationSample, PairingRow, RemotePersonRow};
use crate::store::portals::Portal;
use crate::store::{Chat, ChatKind, Origin, Store, StoreResult};

/// How recent a post must be for its author to count as active.
pub const ACTIVE_DAYS: i64 = 30;

/// The announcement's key in the store (announced once per portal).
const CLOSABLE: &str = "closable";

/// One remote person as the status names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub remote_user: String,
    pub name: String,
    /// Their COI address, when paired.
    pub address: Option<String>,
}

/// A portal's migration status at one time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortalStatus {
    pub moved: Vec<Named>,
    pub only_remote: Vec<Named>,
    pub left_since_moving: Vec<Named>,
    pub active_not_moved: Vec<Named>,
    /// People seen in the remote chat and not gone.
    pub remote_seen: usize,
    /// How many people the remote chat has as its network counts them (the bridge's bot
    /// not counted), when the bridge could count them ([`coi_bridge_api::member_count_key`]).
    pub remote_count: Option<usize>,
    /// Members of the COI chat (the bridge not counted).
    pub coi_members: usize,
    /// Someone was active in the last [`ACTIVE_DAYS`] days, and all of them moved.
    pub closable: bool,
}

/// The status from the rows (no I/O): `people` seen in the remote chat, the bridge's
/// `pairings`, the COI chat's member addresses, at `now` (unix seconds).
pub fn status(people: &[RemotePersonRow], pairings: &[PairingRow], coi: &[String], now: i64) -> PortalStatus {
    let active_since = now - ACTIVE_DAYS * 86_400;
    let mut s = PortalStatus { coi_members: coi.len(), ..PortalStatus::default() };
    let mut active = 0usize;
    for p in people {
        let address = pairings.iter().find(|r| r.remote_user == p.remote_user).map(|r| r.address.clone());
        let on_coi = address.as_ref().is_some_and(|a| coi.iter().any(|m| m.eq_ignore_ascii_case(a)));
        let named = Named {
            remote_user: p.remote_user.clone(),
            name: p.display_name.clone(),
            address: address.filter(|_| on_coi),
        };
        let gone = p.left_at.is_some();
        let is_active = !gone && p.last_posted.is_some_and(|t| t >= active_since);
        if is_active {
            active += 1;
        }
        match (on_coi, gone) {
            (true, true) => s.left_since_moving.push(named),
            (true, false) => {
                s.remote_seen += 1;
                s.moved.push(named);
            }
            (false, true) => {}
            (false, false) => {
                s.remote_seen += 1;
                if is_active {
                    s.active_not_moved.push(named.clone());
                }
                s.only_remote.push(named);
            }
        }
    }
    s.closable = active > 0 && s.active_not_moved.is_empty();
    s
}

fn names(list: &[Named]) -> String {
    list.iter()
        .map(|n| match &n.address {
            Some(a) => format!("{} ({a})", n.name),
            None => n.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl PortalStatus {
    /// The size of the remote side: the network's count, or the people seen without one.
    /// Never fewer than seen: a count can be older than the last person who came.
    pub fn remote_members(&self) -> usize {
        self.remote_count.map_or(self.remote_seen, |n| n.max(self.remote_seen))
    }

    /// Remote members the bridge has not seen join or post: counted, not named.
    pub fn unseen(&self) -> usize {
        self.remote_members() - self.remote_seen
    }

    /// The status as a chat reply, `label` naming the remote network ("Telegram").
    pub fn render(&self, label: &str) -> String {
        let of = match self.remote_count {
            Some(_) => format!("{} members here", self.remote_members()),
            None => format!("{} people seen here", self.remote_seen),
        };
        let mut out = format!(
            "Moved to COI: {} of the {of}{}",
            self.moved.len(),
            if self.moved.is_empty() { ".".to_owned() } else { format!(": {}.", names(&self.moved)) }
        );
        let mut only = names(&self.only_remote);
        let unseen = self.unseen();
        if unseen > 0 {
            let people = if unseen == 1 { "person" } else { "people" };
            let and = if only.is_empty() { String::new() } else { format!("{only} and ") };
            let more = if only.is_empty() { "" } else { " more" };
            only = format!("{and}{unseen}{more} {people} the bridge has not seen join or post");
        }
        if !only.is_empty() {
            out.push_str(&format!("\nOnly on {label}: {only}."));
        }
        if !self.active_not_moved.is_empty() {
            out.push_str(&format!(
                "\nActive in the last {ACTIVE_DAYS} days and not moved yet: {}.",
                names(&self.active_not_moved)
            ));
        }
        if !self.left_since_moving.is_empty() {
            out.push_str(&format!("\nLeft {label} since moving: {}.", names(&self.left_since_moving)));
        }
        if self.closable {
            out.push_str(&format!("\nEveryone active here is also on COI; this {label} group can be closed."));
        }
        out
    }
}

/// The status of `portal`, whose COI chat is `chat`, now.
pub async fn portal_status(store: &dyn Store, portal: &Portal, chat: &Chat) -> StoreResult<PortalStatus> {
    let people = store.remote_people(&portal.bridge, &portal.remote_chat).await?;
    let pairings = store.pairings(&portal.bridge).await?;
    let coi = coi_members(chat);
    let mut s = status(&people, &pairings, &coi, chrono::Utc::now().timestamp());
    s.remote_count = remote_count(store, portal).await?;
    Ok(s)
}

/// How many people the remote chat of `portal` has, as its bridge last counted them.
async fn remote_count(store: &dyn Store, portal: &Portal) -> StoreResult<Option<usize>> {
    let key = coi_bridge_api::member_count_key(&portal.remote_chat.as_str().into());
    let value = store.bridge_state(&portal.bridge, &key).await?;
    Ok(value.and_then(|v| v.trim().parse().ok()))
}

/// The COI side of a chat: a group's members, or a 1:1 chat's peer.
fn coi_members(chat: &Chat) -> Vec<String> {
    match chat.kind {
        ChatKind::Group => chat.members.clone(),
        ChatKind::Single => vec![chat.key.clone()],
    }
}

/// Records a sample of `portal` for the report's chart.
pub async fn sample(store: &dyn Store, portal: &Portal, s: &PortalStatus) -> StoreResult<()> {
    let row = MigrationSample {
        bridge: portal.bridge.clone(),
        remote_chat: portal.remote_chat.clone(),
        at: chrono::Utc::now().timestamp(),
        remote_members: s.remote_members() as i64,
        coi_members: s.coi_members as i64,
        moved: s.moved.len() as i64,
    };
    store.record_migration_sample(&row).await
}

/// Where a portal's migration gauges go: the daemon's metrics, and the account's address
/// (their `account` label).
#[derive(Clone, Copy)]
pub struct Gauges<'a> {
    pub metrics: &'a Metrics,
    pub account: &'a str,
}

/// For each portal of `chat` (the COI chat someone just moved into, or whose remote side
/// changed): a sample for the report's chart, its gauges set (with `gauges`), and when it
/// is closable and was never announced, says so once in the COI chat, which carries it to
/// every portal. `labels` names each portal's network by bridge id.
pub async fn announce_if_closable(
    store: &dyn Store,
    outbound: &Outbound,
    chat: &Chat,
    labels: &std::collections::HashMap<String, String>,
    gauges: Option<Gauges<'_>>,
) -> Result<(), QueueError> {
    for portal in store.portals_of_chat(chat.id).await? {
        if crate::hub::private::is_private_chat(store, &portal, chat).await? {
            continue; // a private chat with the bot: no group to close
        }
        let s = portal_status(store, &portal, chat).await?;
        // Every change of who moved is a point of the report's chart, and shows in /metrics.
        sample(store, &portal, &s).await?;
        if let Some(g) = gauges {
            set_gauges(g.metrics, g.account, &portal, &s);
        }
        if !s.closable {
            continue;
        }
        let now = chrono::Utc::now().timestamp();
        if !store.announce_once(&portal.bridge, &portal.remote_chat, CLOSABLE, now).await? {
            continue;
        }
        let network = labels.get(&portal.bridge).map_or(portal.bridge.as_str(), String::as_str);
        let text = format!(
            "Everyone active here in the last {ACTIVE_DAYS} days is also on COI ({}); this {network} group can be \
             closed.",
            names(&s.moved)
        );
        tracing::info!(bridge = %portal.bridge, remote_chat = %portal.remote_chat, moved = s.moved.len(), "migration: the remote group can be closed");
        let msg = ChatMessage { text, ..ChatMessage::default() };
        outbound.queue_to_chat(Origin::Local, chat, msg).await?;
    }
    Ok(())
}

/// How often each account samples its portals: the report's chart and the metrics, and
/// a group that became closable because someone's activity aged past [`ACTIVE_DAYS`].
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// One account's migration sampler (a worker of its own, at start and every
/// [`SAMPLE_EVERY`]).
pub struct Sampler {
    pub store: std::sync::Arc<dyn Store>,
    pub outbound: std::sync::Arc<Outbound>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The account's address (the metrics' `account` label).
    pub account: String,
    pub labels: std::collections::HashMap<String, String>,
}

impl Sampler {
    pub async fn run(&self, token: tokio_util::sync::CancellationToken) {
        loop {
            // Boxed: the hour between samples holds only the wait (#12's memory budget).
            if let Err(e) = Box::pin(self.once()).await {
                tracing::warn!(account = %self.account, error = %e, "migration: sampling the portals failed; next time");
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    }

    /// Samples every portal once and sets its gauges, announces a group that became
    /// closable, and drops the gauges of portals that are gone (unlinked, moved to a new
    /// chat id).
    pub async fn once(&self) -> Result<(), QueueError> {
        let mut chats = Vec::new();
        let mut sampled = Vec::new();
        for portal in self.store.portals().await? {
            let Some(chat) = self.store.chat(portal.chat_id).await? else { continue };
            if crate::hub::private::is_private_chat(self.store.as_ref(), &portal, &chat).await? {
                continue; // a private chat with the bot: no migration to watch, no gauges
            }
            sampled.push((portal.bridge.clone(), portal.remote_chat.clone()));
            if !chats.iter().any(|c: &Chat| c.id == chat.id) {
                chats.push(chat);
            }
        }
        let gauges = Gauges { metrics: &self.metrics, account: &self.account };
        for chat in &chats {
            // Each portal of the chat: sampled, its gauges set, announced when closable.
            announce_if_closable(self.store.as_ref(), &self.outbound, chat, &self.labels, Some(gauges)).await?;
        }
        for (bridge, remote_chat) in gauged(&self.metrics, &self.account) {
            if !sampled.iter().any(|(b, r)| *b == bridge && *r == remote_chat) {
                tracing::info!(account = %self.account, %bridge, %remote_chat, "migration: the portal is gone; its gauges go too");
                drop_gauges(&self.metrics, &self.account, &bridge, &remote_chat);
            }
        }
        Ok(())
    }
}

/// The sides of `migration_members`.
const SIDES: [&str; 2] = ["remote", "coi"];

/// Sets the migration gauges of `portal` (an account's, `account` its address) from `s`.
pub fn set_gauges(metrics: &Metrics, account: &str, portal: &Portal, s: &PortalStatus) {
    let labels = [account, portal.bridge.as_str(), portal.remote_chat.as_str()];
    for (side, n) in SIDES.into_iter().zip([s.remote_members(), s.coi_members]) {
        metrics.migration_members.with_label_values(&[labels[0], labels[1], labels[2], side]).set(n as i64);
    }
    metrics.migration_moved.with_label_values(&labels).set(s.moved.len() as i64);
    metrics.migration_active_not_moved.with_label_values(&labels).set(s.active_not_moved.len() as i64);
}

/// Removes the migration gauges of the portal of `account` on `bridge` in `remote_chat`,
/// so a portal that is gone is not exported with its last numbers for ever.
pub fn drop_gauges(metrics: &Metrics, account: &str, bridge: &str, remote_chat: &str) {
    let labels = [account, bridge, remote_chat];
    for side in SIDES {
        // Absent already is fine: the series is gone either way.
        let _ = metrics.migration_members.remove_label_values(&[account, bridge, remote_chat, side]);
    }
    let _ = metrics.migration_moved.remove_label_values(&labels);
    let _ = metrics.migration_active_not_moved.remove_label_values(&labels);
}

/// The portals (bridge, remote chat) of `account` that have migration gauges now.
fn gauged(metrics: &Metrics, account: &str) -> Vec<(String, String)> {
    use prometheus::core::Collector as _;
    let mut out: Vec<(String, String)> = Vec::new();
    let families = [
        metrics.migration_members.collect(),
        metrics.migration_moved.collect(),
        metrics.migration_active_not_moved.collect(),
    ];
    for family in families.iter().flatten() {
        for m in family.get_metric() {
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value());
            let (Some(a), Some(b), Some(r)) = (label("account"), label("bridge"), label("remote_chat")) else {
                continue;
            };
            if a == account && !out.iter().any(|(ob, or)| ob == b && or == r) {
                out.push((b.to_owned(), r.to_owned()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migration::{PairedVia, Seen};
    use std::collections::HashMap;
    use std::sync::Arc;

    const NOW: i64 = 1_800_000_000;

    fn person(user: &str, name: &str, posted_days_ago: Option<i64>, left: bool) -> RemotePersonRow {
        RemotePersonRow {
            bridge: "telegram".into(),
            remote_chat: "-100".into(),
            remote_user: user.into(),
            display_name: name.into(),
            first_seen: NOW - 90 * 86_400,
            last_posted: posted_days_ago.map(|d| NOW - d * 86_400),
            left_at: left.then_some(NOW - 86_400),
        }
    }

    fn paired(user: &str, address: &str) -> PairingRow {
        PairingRow {
            bridge: "telegram".into(),
            remote_user: user.into(),
            address: address.into(),
            via: PairedVia::Invite,
            paired_at: NOW,
        }
    }

    #[test]
    fn people_fall_into_moved_only_remote_active_and_left() {
        let people = [
            person("1", "Ann", Some(2), false),
            person("2", "Bob", Some(3), false),
            person("3", "Cy", Some(40), false),
            person("4", "Di", None, true),
            person("5", "Ed", Some(1), false),
        ];
        // Ed paired, but his address is not in the COI group (yet): not moved.
        let pairings = [paired("1", "ann@x"), paired("4", "di@x"), paired("5", "ed@x")];
        let coi = ["ann@x".to_owned(), "di@x".to_owned(), "zoe@x".to_owned()];
        let s = status(&people, &pairings, &coi, NOW);
        let users = |l: &[Named]| l.iter().map(|n| n.remote_user.clone()).collect::<Vec<_>>();
        assert_eq!(users(&s.moved), ["1"]);
        assert_eq!(s.moved[0].address.as_deref(), Some("ann@x"));
        assert_eq!(users(&s.only_remote), ["2", "3", "5"]);
        assert_eq!(users(&s.active_not_moved), ["2", "5"], "Cy posted 40 days ago: not active");
        assert_eq!(users(&s.left_since_moving), ["4"]);
        assert_eq!((s.remote_seen, s.coi_members), (4, 3));
        assert!(!s.closable);
        let text = s.render("Telegram");
        assert!(text.contains("Moved to COI: 1 of the 4 people seen here: Ann (ann@x)."), "{text}");
        assert!(text.contains("Active in the last 30 days and not moved yet: Bob, Ed."), "{text}");
        assert!(text.contains("Left Telegram since moving: Di (di@x)."), "{text}");
    }

    /// The `/metrics` lines of the migration gauges that name `remote_chat`.
    fn series(metrics: &Metrics, remote_chat: &str) -> Vec<String> {
        let chat = format!("remote_chat=\"{remote_chat}\"");
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("coi_bridge_migration_") && l.contains(&chat))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn the_gauges_of_an_unlinked_portal_go_at_the_next_sample() {
        use crate::coi::Mailbox;
        use crate::store::ChatRef;
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).await.expect("store"));
        let identity = Arc::new(
            crate::hub::e2ee::Identity::load_or_create(store.as_ref(), "bridge@x.org", None).await.expect("identity"),
        );
        let outbound = Arc::new(Outbound::new(
            store.clone(),
            Mailbox::new("bridge@x.org", Some("Bridge")),
            identity,
            crate::config::EncryptionPolicy::Opportunistic,
            crate::hub::wake::OutboxNotifier::new(),
        ));
        let chat = ChatRef { kind: ChatKind::Group, key: "grp_abcdefghij".into(), name: "Room".into() };
        let chat_id = store.ensure_chat(&chat).await.expect("chat");
        store.update_members(chat_id, &["ann@x".into()], &[]).await.expect("members");
        store.create_portal(chat_id, "matrix", "!room:hs").await.expect("portal");
        store.create_portal(chat_id, "telegram", "-100").await.expect("portal");
        store.note_remote_person("telegram", "-100", "1", "Ann", Seen::Posted, NOW).await.expect("seen");
        store.pair(&paired("1", "ann@x")).await.expect("paired");
        // Telegram counts 7 people in the group; the bridge has seen one.
        store.set_bridge_state("telegram", "member_count:-100", "7").await.expect("count");
        let metrics = Arc::new(Metrics::new());
        // Another account's portal with the same remote chat id is not this sampler's.
        metrics.migration_moved.with_label_values(&["other@x.org", "telegram", "-100"]).set(7);
        let sampler = Sampler {
            store: store.clone(),
            outbound,
            metrics: metrics.clone(),
            account: "bridge@x.org".into(),
            labels: HashMap::new(),
        };
        sampler.once().await.expect("sampled");
        let tg = series(&metrics, "-100");
        assert!(
            tg.iter().any(|l| l.contains("migration_moved{account=\"bridge@x.org\"") && l.ends_with(" 1")),
            "{tg:?}"
        );
        assert_eq!(tg.len(), 5, "members (two sides), moved, active-not-moved, and the other account's: {tg:?}");
        assert!(tg.iter().any(|l| l.contains("side=\"remote\"") && l.ends_with(" 7")), "the count: {tg:?}");
        let samples = store.migration_samples("telegram", "-100").await.expect("samples");
        assert_eq!(
            samples.iter().map(|s| s.remote_members).collect::<Vec<_>>(),
            [7],
            "one sample, counted: {samples:?}"
        );
        let room = series(&metrics, "!room:hs");
        assert!(
            room.iter().any(|l| l.contains("side=\"remote\"") && l.ends_with(" 0")),
            "no count, nobody seen: {room:?}"
        );
        assert_eq!(series(&metrics, "!room:hs").len(), 4);

        assert!(store.delete_portal("telegram", "-100").await.expect("unlinked"));
        sampler.once().await.expect("sampled");
        assert_eq!(
            series(&metrics, "-100"),
            ["coi_bridge_migration_moved{account=\"other@x.org\",bridge=\"telegram\",remote_chat=\"-100\"} 7"],
            "only the other account's series is left"
        );
        assert_eq!(series(&metrics, "!room:hs").len(), 4, "the portal still linked keeps its gauges");
    }

    #[test]
    fn a_counted_remote_side_names_the_people_seen_and_counts_the_rest() {
        let people = [person("1", "Ann", Some(2), false), person("2", "Bob", Some(3), false)];
        let coi = ["ann@x".to_owned()];
        let mut s = status(&people, &[paired("1", "ann@x")], &coi, NOW);
        s.remote_count = Some(5);
        assert_eq!((s.remote_members(), s.unseen()), (5, 3));
        let text = s.render("Telegram");
        assert!(text.contains("Moved to COI: 1 of the 5 members here: Ann (ann@x)."), "{text}");
        assert!(
            text.contains("Only on Telegram: Bob and 3 more people the bridge has not seen join or post."),
            "{text}"
        );
        s.remote_count = Some(1);
        assert_eq!((s.remote_members(), s.unseen()), (2, 0), "never fewer than seen (an older count)");
        assert!(s.render("Telegram").contains("\nOnly on Telegram: Bob.\n"), "{}", s.render("Telegram"));
        let quiet = status(&[person("1", "Ann", Some(2), false)], &[paired("1", "ann@x")], &coi, NOW);
        let one_more = PortalStatus { remote_count: Some(2), ..quiet };
        assert!(
            one_more.render("Telegram").contains("Only on Telegram: 1 person the bridge has not seen join or post."),
            "{}",
            one_more.render("Telegram")
        );
    }

    #[test]
    fn closable_when_every_active_person_moved_and_someone_was_active() {
        let people = [person("1", "Ann", Some(2), false), person("3", "Cy", Some(40), false)];
        let coi = ["ann@x".to_owned()];
        assert!(status(&people, &[paired("1", "ann@x")], &coi, NOW).closable, "Cy is not active");
        assert!(!status(&people, &[], &coi, NOW).closable, "Ann is active and not moved");
        let quiet = [person("3", "Cy", Some(40), false)];
        assert!(!status(&quiet, &[], &coi, NOW).closable, "nobody active: nothing to say");
        let s = status(&people, &[paired("1", "ANN@x")], &coi, NOW);
        assert!(s.closable, "addresses compare without case");
        assert!(s.render("Telegram").contains("this Telegram group can be closed"));
    }
}
