//! Account leases with fencing on a real PostgreSQL (tests/support/postgres.rs): one holder per account, the next holder after expiry with a higher epoch, stores of a lost lease refusing writes while the new holder's work, and a takeover that waits for the old holder's write in flight.
//!
//! Two [`Leases`] handles on one database stand for two daemons. Where a lease has to
//! expire at a chosen moment, the test moves its `expires_at` into the past with psql (the
//! passing of its ttl, without waiting for it); one test lets a short ttl run out for real.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coi_bridge::coi::{ChatMessage, Mailbox};
use coi_bridge::store::lease::{Fence, Leases};
use coi_bridge::store::portals::PortalStore as _;
use coi_bridge::store::postgres::PgStore;
use coi_bridge::store::{
    ChatKind, ChatRef, Envelope, ImapCursor, InboundMessage, OpenOptions, Origin, OutboundMail, Store, account_schema,
};

use crate::support::eventually;
use crate::support::postgres::PgServer;

const WAIT: Duration = Duration::from_secs(60);
/// A ttl no test outlives.
const LONG: Duration = Duration::from_secs(3600);
const ACCT: &str = "bridge@example.org";

/// A fresh database on this binary's server, or return (outside CI) when PostgreSQL is missing.
macro_rules! pg_database {
    () => {
        match PgServer::shared() {
            Some(pg) => (pg, pg.database()),
            None => return,
        }
    };
}

async fn leases(url: &str) -> Leases {
    Leases::open(url).await.expect("open the lease table")
}

/// The account's store in its schema, written under `fence`.
fn options(fence: &Fence) -> OpenOptions {
    OpenOptions { schema: Some(account_schema(&fence.account)), fence: Some(fence.clone()), sqlite_path: None }
}

async fn fenced(url: &str, fence: &Fence) -> Arc<dyn Store> {
    coi_bridge::store::open_with(url, Path::new("/nonexistent"), &options(fence)).await.expect("open the account store")
}

/// The lease of `account` expires now, as if its ttl had run out.
fn expire(pg: &PgServer, url: &str, account: &str) {
    pg.psql(
        url,
        &format!(
            "UPDATE coi_lease SET expires_at = clock_timestamp() - interval '1 second' WHERE account = '{account}'"
        ),
    );
}

fn peer() -> ChatRef {
    ChatRef { kind: ChatKind::Single, key: "peer@example.org".into(), name: "Peer".into() }
}

fn outbound(id: &str) -> OutboundMail {
    OutboundMail {
        chat: peer(),
        message: ChatMessage {
            message_id: id.into(),
            from: Mailbox::new(ACCT, None),
            text: id.into(),
            ..ChatMessage::default()
        },
        raw: format!("raw {id}").into_bytes(),
        envelope: Envelope { from: ACCT.into(), to: vec!["peer@example.org".into()] },
        also: None,
        origin: Origin::Local,
        targets: vec![],
    }
}

fn inbound(uid: u32, id: &str) -> InboundMessage {
    InboundMessage {
        uid,
        chat: peer(),
        message: ChatMessage {
            message_id: id.into(),
            from: Mailbox::new("peer@example.org", Some("Peer")),
            text: format!("text of {id}"),
            ..ChatMessage::default()
        },
        members_added: vec!["peer@example.org".into()],
        members_removed: vec![],
        security: "verified",
        targets: vec!["matrix".into()],
    }
}

async fn record(store: &dyn Store, uid: u32, id: &str) -> coi_bridge::store::StoreResult<()> {
    let cursor = ImapCursor { uid_validity: 1, last_uid: uid };
    store.record_inbound("INBOX", cursor, &[inbound(uid, id)], &[]).await.map(|_| ())
}

#[tokio::test]
async fn one_daemon_holds_an_account_and_the_next_takes_it_after_expiry_with_a_higher_epoch() {
    let (_pg, url) = pg_database!();
    let (a, b) = (leases(&url).await, leases(&url).await);
    let fa = a.try_acquire(ACCT, "node-a", LONG).await.expect("acquire").expect("a free account is taken");
    assert_eq!((fa.account.as_str(), fa.holder.as_str(), fa.epoch), (ACCT, "node-a", 1));
    assert_eq!(a.try_acquire(ACCT, "node-a", LONG).await.expect("again"), Some(fa.clone()), "ours: same epoch");
    assert_eq!(b.try_acquire(ACCT, "node-b", LONG).await.expect("acquire"), None, "held by A");
    let rows = b.list().await.expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].holder.as_str(), rows[0].epoch, rows[0].live), ("node-a", 1, true));

    // A renews with a short ttl and then stops renewing: the lease runs out on the
    // database's clock, and B takes it with the next epoch.
    assert_eq!(a.renew("node-a", std::slice::from_ref(&fa), Duration::from_millis(300)).await.expect("renew"), [ACCT]);
    let fb = eventually(WAIT, "B takes the expired lease", || async {
        b.try_acquire(ACCT, "node-b", LONG).await.expect("acquire")
    })
    .await;
    assert_eq!((fb.holder.as_str(), fb.epoch), ("node-b", 2));
    assert_eq!(a.try_acquire(ACCT, "node-a", LONG).await.expect("acquire"), None, "held by B now");

    // Renew answers with what is still held, in one call for many accounts.
    let other = a.try_acquire("other@example.org", "node-a", LONG).await.expect("acquire").expect("free");
    let lost: Vec<String> = Vec::new();
    assert_eq!(a.renew("node-a", std::slice::from_ref(&fa), LONG).await.expect("renew"), lost, "A lost it");
    assert_eq!(a.renew("node-a", &[fa.clone(), other.clone()], LONG).await.expect("renew"), ["other@example.org"]);
    let posing = Fence { holder: "node-b".into(), ..other.clone() };
    assert_eq!(b.renew("node-b", &[fb.clone(), posing], LONG).await.expect("renew"), [ACCT]);
    let stale = Fence { epoch: 1, ..fb.clone() };
    assert_eq!(b.renew("node-b", &[stale], LONG).await.expect("renew"), lost, "an old epoch renews nothing");

    // A clean stop hands the account over at once, with the next epoch.
    b.release(&fb).await.expect("release");
    let fa3 = a.try_acquire(ACCT, "node-a", LONG).await.expect("acquire").expect("released");
    assert_eq!(fa3.epoch, 3);
    assert_eq!(b.renew("node-b", &[fb], LONG).await.expect("renew"), lost);
    let rows = a.list().await.expect("list");
    let rows: Vec<_> = rows.iter().map(|r| (r.account.as_str(), r.holder.as_str(), r.epoch, r.live)).collect();
    assert_eq!(rows, [(ACCT, "node-a", 3, true), ("other@example.org", "node-a", 1, true)]);
}

#[tokio::test]
async fn a_store_whose_lease_passed_on_cannot_write_and_the_new_holders_can() {
    let (pg, url) = pg_database!();
    let (a, b) = (leases(&url).await, leases(&url).await);
    let fa = a.try_acquire(ACCT, "node-a", LONG).await.expect("acquire").expect("free");
    let sa = fenced(&url, &fa).await;
    sa.queue_outbound(&outbound("a1@x")).await.expect("A writes under its lease");
    record(&*sa, 1, "in1@x").await.expect("A records under its lease");

    // Expired, not yet taken: A's store already refuses.
    expire(pg, &url, ACCT);
    let e = sa.set_bridge_state("matrix", "since", "s1").await.expect_err("the lease expired");
    assert!(e.is_fenced() && !e.is_retry(), "{e}");
    assert!(e.to_string().contains("lease lost") && e.to_string().contains("expired"), "{e}");

    let fb = b.try_acquire(ACCT, "node-b", LONG).await.expect("acquire").expect("expired");
    assert_eq!(fb.epoch, fa.epoch + 1);
    let sb = fenced(&url, &fb).await;
    let e = sa.queue_outbound(&outbound("a2@x")).await.expect_err("A's lease passed to B");
    assert!(e.is_fenced(), "{e}");
    assert!(e.to_string().contains("node-b"), "the error names the holder: {e}");
    let e = record(&*sa, 2, "in2@x").await.expect_err("A cannot record either");
    assert!(e.is_fenced(), "{e}");
    // The refused batch left nothing behind, its cursor included; B sees A's earlier work.
    assert!(sb.message("a2@x").await.expect("read").is_none());
    assert!(sb.message("in2@x").await.expect("read").is_none());
    assert_eq!(sb.imap_cursor("INBOX").await.expect("cursor").map(|c| c.last_uid), Some(1));
    assert!(sb.message("a1@x").await.expect("read").is_some(), "same schema, same store");

    // B writes.
    sb.queue_outbound(&outbound("b1@x")).await.expect("B holds the lease");
    record(&*sb, 2, "in2@x").await.expect("B records");
    assert_eq!(sb.outbox_depth("matrix").await.expect("depth"), 2);
    // A store reopened with A's old fence is fenced as well.
    let again = fenced(&url, &fa).await;
    assert!(again.set_bridge_state("matrix", "k", "v").await.expect_err("stale fence").is_fenced());
    // A store without a fence (the CLI, migrate-store) is not held back.
    let cli = coi_bridge::store::open_with(
        &url,
        Path::new("/nonexistent"),
        &OpenOptions { schema: Some(account_schema(ACCT)), ..OpenOptions::default() },
    )
    .await
    .expect("open");
    cli.set_bridge_state("matrix", "k", "v").await.expect("unfenced");
}

/// A's transaction is in flight (its first write checked the lease) when the lease
/// expires: B's takeover waits for it, A's transaction commits whole, and A's next write,
/// after B's epoch began, fails.
#[tokio::test]
async fn a_takeover_waits_for_the_old_holders_write_in_flight() {
    let (pg, url) = pg_database!();
    let (a, b) = (leases(&url).await, leases(&url).await);
    let fa = a.try_acquire(ACCT, "node-a", LONG).await.expect("acquire").expect("free");
    let sa = PgStore::open_in(&url, &options(&fa)).await.expect("open");
    // A store call's transaction, held open between its statements.
    let mut tx = sa.pool().begin().await.expect("begin");
    sqlx::query("INSERT INTO bridge_state (bridge, key, value) VALUES ('matrix', 'k1', 'in flight')")
        .execute(&mut *tx)
        .await
        .expect("A writes under its lease");
    expire(pg, &url, ACCT);

    let taker = tokio::spawn(async move {
        loop {
            match b.try_acquire(ACCT, "node-b", LONG).await {
                Ok(Some(fence)) => return fence,
                Ok(None) => panic!("the expired lease counts as held"),
                // The lock timeout: the lease loop gets control back and tries again.
                Err(e) if e.is_retry() => continue,
                Err(e) => panic!("{e}"),
            }
        }
    });
    eventually(WAIT, "B's takeover waits on A's lease row", || async {
        let waiting = pg.psql(
            &url,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'coi-bridge-lease' AND wait_event_type = 'Lock'",
        );
        (waiting == "1").then_some(())
    })
    .await;
    assert!(!taker.is_finished(), "B cannot take the lease while A's write is in flight");

    // A's transaction goes on and commits: all of it lands before B's epoch.
    sqlx::query("INSERT INTO bridge_state (bridge, key, value) VALUES ('matrix', 'k2', 'in flight')")
        .execute(&mut *tx)
        .await
        .expect("the same transaction writes on");
    tx.commit().await.expect("A's write in flight commits");
    let fb = tokio::time::timeout(WAIT, taker).await.expect("B takes over once A committed").expect("task");
    assert_eq!(fb.epoch, fa.epoch + 1);

    let e = sa.set_bridge_state("matrix", "k3", "after").await.expect_err("B's epoch began");
    assert!(e.is_fenced(), "{e}");
    let sb = fenced(&url, &fb).await;
    for (key, want) in [("k1", Some("in flight")), ("k2", Some("in flight")), ("k3", None)] {
        assert_eq!(sb.bridge_state("matrix", key).await.expect("read").as_deref(), want, "{key}");
    }
}

/// Every table of an account's schema is fenced, also one a later migration adds: the
/// trigger is put on whatever table lacks it at each open.
#[tokio::test]
async fn every_table_is_fenced_including_ones_added_later() {
    let (pg, url) = pg_database!();
    let a = leases(&url).await;
    let fa = a.try_acquire(ACCT, "node-a", LONG).await.expect("acquire").expect("free");
    let schema = account_schema(ACCT);
    drop(fenced(&url, &fa).await);
    let unfenced = format!(
        "SELECT COUNT(*) FROM pg_tables t WHERE t.schemaname = '{schema}' AND NOT EXISTS \
         (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = format('%I.%I', t.schemaname, t.tablename)::regclass \
          AND g.tgname = 'coi_fence')"
    );
    let tables = format!("SELECT COUNT(*) FROM pg_tables WHERE schemaname = '{schema}'");
    assert!(pg.psql(&url, &tables).parse::<u32>().expect("count") >= 17, "the store's tables");
    assert_eq!(pg.psql(&url, &unfenced), "0", "every table has the trigger");

    // A table a later migration makes: fenced from the next open on.
    pg.psql(&url, &format!("CREATE TABLE {schema}.later (x BIGINT)"));
    assert_eq!(pg.psql(&url, &unfenced), "1");
    let sa = PgStore::open_in(&url, &options(&fa)).await.expect("reopen");
    assert_eq!(pg.psql(&url, &unfenced), "0");
    expire(pg, &url, ACCT);
    let e = sqlx::query("INSERT INTO later (x) VALUES (1)").execute(sa.pool()).await.expect_err("fenced");
    assert!(e.to_string().contains("lease lost"), "{e}");
    let e = sqlx::query("TRUNCATE message CASCADE").execute(sa.pool()).await.expect_err("fenced");
    assert!(e.to_string().contains("lease lost"), "{e}");
}

/// Daemons opening the same account at once migrate its schema once; each account's schema
/// is its own.
#[tokio::test]
async fn daemons_opening_one_account_at_once_migrate_its_schema_once() {
    let (pg, url) = pg_database!();
    let opts = OpenOptions { schema: Some(account_schema(ACCT)), ..OpenOptions::default() };
    let opened = futures::future::join_all((0..4).map(|_| PgStore::open_in(&url, &opts))).await;
    for store in opened {
        assert_eq!(store.expect("every daemon opens the store").schema_version().await.expect("version"), 8);
    }
    let schema = account_schema(ACCT);
    assert_eq!(pg.psql(&url, &format!("SELECT COUNT(*) || ' ' || MAX(version) FROM {schema}.coi_schema")), "8 8");
    assert_eq!(pg.psql(&url, "SELECT to_regclass('public.coi_schema') IS NULL"), "t", "nothing in public");
    let e = match PgStore::open_in(
        &url,
        &OpenOptions { schema: Some("Robert'); DROP TABLE x;--".into()), ..OpenOptions::default() },
    )
    .await
    {
        Ok(_) => panic!("not a schema name"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("not a usable schema name"), "{e}");
}
