//! The PostgreSQL store against a real server (Debian's, started by tests/support/postgres.rs): the store conformance suite, migrations under the advisory lock, errors naming store.url, and the daemon's batches with their IMAP cursor across a SIGKILL.

use std::sync::Arc;
use std::time::Duration;

use coi_bridge::coi::{self, ChatMessage, Mailbox};
use coi_bridge::store::conformance::{Backend, POISON};
use coi_bridge::store::postgres::PgStore;
use coi_bridge::store::{Direction, Store};
use coi_bridge_api::Attachment;

use crate::support::postgres::PgServer;
use crate::support::{BRIDGE, Daemon, Link, eventually, free_port, write_config};

const WAIT: Duration = Duration::from_secs(60);

/// A fresh database on this binary's server, or return (outside CI) when PostgreSQL is missing.
macro_rules! pg_database {
    () => {
        match PgServer::shared() {
            Some(pg) => pg.database(),
            None => return,
        }
    };
}

/// The conformance suite's backend: a PostgreSQL store on a database of its own.
struct PgBackend {
    store: Arc<dyn Store>,
    url: String,
    /// The store's schema, when it is not the database's default.
    schema: Option<String>,
}

#[async_trait::async_trait]
impl Backend for PgBackend {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// A trigger fails the insert of the poisoned Message-ID inside its transaction.
    async fn poison(&self) {
        let pg = PgServer::shared().expect("PostgreSQL");
        let search_path = self.schema.as_ref().map(|s| format!("SET search_path TO {s};")).unwrap_or_default();
        pg.psql(
            &self.url,
            &format!(
                "{search_path}
                 CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.message_id = '{POISON}' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$;
                 CREATE TRIGGER poison BEFORE INSERT ON message FOR EACH ROW EXECUTE FUNCTION poison();"
            ),
        );
    }
}

/// The store conformance suite (src/store/conformance.rs), each case on a fresh database.
mod conformance {
    use super::*;

    async fn make() -> Box<dyn Backend> {
        let pg = PgServer::shared()
            .expect("PostgreSQL is not installed: run `bash tests/servers/install.sh` (Debian's postgresql)");
        let url = pg.database();
        Box::new(PgBackend { store: open(&url).await, url, schema: None })
    }

    coi_bridge::store_conformance_tests!(make);
}

/// The conformance suite again, each case on an account's store in its own schema, written
/// under a live lease (the fence), in a database where the default namespace and another
/// account already hold data: schemas are independent, and a current lease does not get in
/// the way of any write.
mod conformance_in_an_account_schema {
    use super::*;
    use coi_bridge::store::lease::Leases;
    use coi_bridge::store::{OpenOptions, account_schema};

    const HOUR: Duration = Duration::from_secs(3600);

    async fn make() -> Box<dyn Backend> {
        let pg = PgServer::shared()
            .expect("PostgreSQL is not installed: run `bash tests/servers/install.sh` (Debian's postgresql)");
        let url = pg.database();
        // Neighbours with a chat, a message, a cursor and a portal each.
        let neighbour = |schema: Option<String>| OpenOptions { schema, ..OpenOptions::default() };
        for options in [neighbour(None), neighbour(Some(account_schema("neighbour@example.org")))] {
            let s = coi_bridge::store::open_with(&url, std::path::Path::new("/nonexistent"), &options)
                .await
                .expect("open a neighbour");
            fill(&*s).await;
        }
        let leases = Leases::open(&url).await.expect("leases");
        let fence =
            leases.try_acquire("conformance@example.org", "node-a", HOUR).await.expect("acquire").expect("free");
        let schema = account_schema("conformance@example.org");
        let options = OpenOptions { schema: Some(schema.clone()), fence: Some(fence), sqlite_path: None };
        let store = coi_bridge::store::open_with(&url, std::path::Path::new("/nonexistent"), &options)
            .await
            .expect("open the account store");
        Box::new(PgBackend { store, url, schema: Some(schema) })
    }

    /// Rows in every corner a fresh store's case looks at.
    async fn fill(s: &dyn Store) {
        use coi_bridge::store::{ChatKind, ChatRef, ImapCursor, InboundMessage};
        let chat = ChatRef { kind: ChatKind::Single, key: "p@x.org".into(), name: "P".into() };
        let m = InboundMessage {
            uid: 1,
            chat: chat.clone(),
            message: ChatMessage {
                message_id: "neighbour@x".into(),
                from: Mailbox::new("p@x.org", None),
                text: "next door".into(),
                ..ChatMessage::default()
            },
            members_added: vec!["p@x.org".into()],
            members_removed: vec![],
            security: "verified",
            targets: vec!["matrix".into()],
        };
        s.record_inbound("INBOX", ImapCursor { uid_validity: 5, last_uid: 9 }, &[m], &[]).await.expect("fill");
        s.set_bridge_state("matrix", "since", "next door").await.expect("fill");
        let id = s.ensure_chat(&chat).await.expect("chat");
        s.create_portal(id, "matrix", "!next:door").await.expect("fill");
    }

    coi_bridge::store_conformance_tests!(make);
}

/// Opens a store through `store.url`, as the daemon does.
async fn open(url: &str) -> Arc<dyn Store> {
    coi_bridge::store::open(url, std::path::Path::new("/nonexistent")).await.expect("open the PostgreSQL store")
}

#[tokio::test]
async fn daemons_opening_one_database_at_once_migrate_it_once() {
    let url = pg_database!();
    // Four at once: without the advisory lock they race on CREATE TABLE and all but one fail.
    let opened = futures::future::join_all((0..4).map(|_| PgStore::open(&url))).await;
    for store in opened {
        let store = store.expect("every daemon opens the store");
        assert_eq!(store.schema_version().await.expect("version"), 8);
    }
    let pg = PgServer::shared().expect("server");
    let applied = pg.psql(&url, "SELECT COUNT(*) || ' ' || MAX(version) FROM coi_schema");
    assert_eq!(applied, "8 8", "each migration applied once");
    // Opening again applies nothing and keeps the data.
    let store = open(&url).await;
    store.set_bridge_state("matrix", "since", "s1").await.expect("write");
    let store = open(&url).await;
    assert_eq!(store.bridge_state("matrix", "since").await.expect("read").as_deref(), Some("s1"));
}

#[tokio::test]
async fn a_command_beside_the_daemon_never_sets_up_a_store() {
    let url = pg_database!();
    let e = match coi_bridge::store::open_existing(&url, std::path::Path::new("/nonexistent")).await {
        Ok(_) => panic!("an empty database is no store"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("store.url") && e.contains("no coi-bridge store yet"), "{e}");
    let pg = PgServer::shared().expect("server");
    assert_eq!(pg.psql(&url, "SELECT to_regclass('coi_schema') IS NULL"), "t", "no table was made");
    drop(open(&url).await);
    let store = coi_bridge::store::open_existing(&url, std::path::Path::new("/nonexistent")).await.expect("made");
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn a_schema_from_a_newer_coi_bridge_is_refused() {
    let url = pg_database!();
    drop(open(&url).await);
    let pg = PgServer::shared().expect("server");
    pg.psql(&url, "INSERT INTO coi_schema (version, applied_at) VALUES (99, 0)");
    let e = match PgStore::open(&url).await {
        Ok(_) => panic!("a store from the future must not be opened"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("schema version 99") && e.contains("newer"), "{e}");
}

#[tokio::test]
async fn a_postgres_url_that_does_not_work_is_named_as_store_url() {
    let cases = [
        ("postgres://coi@127.0.0.1:1/nothing", "cannot connect to PostgreSQL at postgres://coi@127.0.0.1:1/nothing"),
        ("postgres://coi:secret@127.0.0.1:notaport/x", "not a usable PostgreSQL URL"),
    ];
    for (url, why) in cases {
        let e = match coi_bridge::store::open(url, std::path::Path::new("/nonexistent")).await {
            Ok(_) => panic!("{url} cannot be opened"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("store.url") && e.contains(why), "{url}: {e}");
        assert!(!e.contains("secret"), "the password stays out of the message: {e}");
    }
}

/// TLS is the default over TCP: a URL that does not ask for plaintext is refused by a
/// server without TLS (the test cluster has none), and the message names the fixes.
#[tokio::test]
async fn a_postgres_url_without_sslmode_needs_tls() {
    let pg = PgServer::shared().expect("server");
    let plain = pg.database();
    let url = plain.strip_suffix("?sslmode=disable").expect("the test URL asks for plaintext");
    let e = match coi_bridge::store::open(url, std::path::Path::new("/nonexistent")).await {
        Ok(_) => panic!("{url}: opened without TLS though the URL did not say so"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("store.url") && e.contains("TLS") && e.contains("sslmode=disable"), "{e}");
    // Said so, plaintext works.
    coi_bridge::store::open(&plain, std::path::Path::new("/nonexistent")).await.expect("sslmode=disable");
}

/// The database going away is the store being unavailable (StoreError::Retry: the
/// callers hold their queues and try again), never a fatal error that would set events
/// aside; once it is back the same store works on, its data intact.
#[tokio::test]
async fn a_database_outage_is_retried_and_the_store_works_on_afterwards() {
    // A server of its own: this test stops it.
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database();
    let store = open(&url).await;
    store.set_bridge_state("matrix", "since", "s1").await.expect("write");
    pg.pause();
    let read = store.bridge_state("matrix", "since").await.expect_err("the database is down");
    assert!(read.is_retry(), "a lost connection is Retry, not Fatal: {read}");
    let write = store.set_bridge_state("matrix", "since", "s2").await.expect_err("the database is down");
    assert!(write.is_retry(), "{write}");
    pg.resume();
    eventually(WAIT, "the store works again", || async { store.ping().await.ok() }).await;
    assert_eq!(store.bridge_state("matrix", "since").await.expect("read").as_deref(), Some("s1"));
    store.set_bridge_state("matrix", "since", "s2").await.expect("write after the outage");
}

/// The daemon with `store.url = "postgres://…"`, killed while it records 200 mails in
/// batches of 8: only whole batches are committed, each with its IMAP cursor, and after a
/// restart every mail is recorded exactly once.
#[tokio::test]
async fn the_daemon_on_postgres_commits_whole_batches_with_their_cursor_across_a_sigkill() {
    coi_bridge::init_crypto();
    let url = pg_database!();
    let server = crate::mail_server!();
    let payload: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
    for i in 0..200 {
        let m = ChatMessage {
            message_id: format!("pg-crash-{i}@localhost"),
            is_chat: true,
            from: Mailbox::new("alice@example.org", None),
            to: vec![Mailbox::new(BRIDGE, None)],
            date: Some(1_795_000_000 + i),
            text: format!("crash {i}"),
            attachments: vec![Attachment {
                name: "p.bin".into(),
                mime: "application/octet-stream".into(),
                data: payload.clone(),
            }],
            ..ChatMessage::default()
        };
        server.deliver("alice@example.org", &[BRIDGE], &coi::render(&m)).await;
    }
    server.wait_for_mails("bridge", 200, WAIT).await;
    let state = tempfile::tempdir().expect("tempdir");
    let http_port = free_port();
    let config = write_config(&server, state.path(), Link::Plain, "batch_size = 8", http_port);
    let mut d = Daemon::with_env(state.path(), config, http_port, &[("COI_BRIDGE__STORE__URL", &url)]);
    let store = open(&url).await;
    let count = || async { store.messages(Direction::In).await.expect("read").len() };
    let deadline = std::time::Instant::now() + WAIT;
    while count().await == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing recorded; log:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    d.kill();
    let after_kill = count().await;
    assert!(after_kill < 200, "the kill should land mid-way (got {after_kill})");
    assert_eq!(after_kill % 8, 0, "only whole batches are committed");
    let cursor = store.imap_cursor("INBOX").await.expect("cursor").expect("set");
    assert_eq!(cursor.last_uid as usize, after_kill, "the cursor moved exactly with the recorded batches");
    assert!(!state.path().join("bridge.db").exists(), "the daemon used PostgreSQL, not the SQLite default");

    d.restart();
    let all = eventually(WAIT, "200 messages recorded", || async {
        let all = store.messages(Direction::In).await.expect("read");
        (all.len() >= 200).then_some(all)
    })
    .await;
    let mut ids: Vec<_> = all.iter().map(|m| m.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), all.len()), (200, 200), "each mail recorded once");
    assert!(all.iter().all(|m| m.attachments.len() == 1 && m.attachments[0].data == payload));
    d.stop();
}

/// Migration 0008's tables (people seen, pairings, personal invites, samples,
/// announcements) are fenced like the others: once the account's lease is gone, every
/// write of the `MigrationStore` fails as fenced, and none of them lands.
#[tokio::test]
async fn migration_rows_are_written_under_the_lease_fence() {
    use coi_bridge::store::lease::Leases;
    use coi_bridge::store::migration::{MigrationSample, PairedVia, PairingRow, PersonalInviteRow, Seen};
    use coi_bridge::store::{OpenOptions, StoreError, StoreResult, account_schema};

    const ACCT: &str = "moving@example.org";
    let url = pg_database!();
    let pg = PgServer::shared().expect("server");
    let leases = Leases::open(&url).await.expect("leases");
    let fence = leases.try_acquire(ACCT, "node-a", Duration::from_secs(3600)).await.expect("acquire").expect("free");
    let options = OpenOptions { schema: Some(account_schema(ACCT)), fence: Some(fence), sqlite_path: None };
    let s = coi_bridge::store::open_with(&url, std::path::Path::new("/nonexistent"), &options).await.expect("open");
    let pairing = |user: &str| PairingRow {
        bridge: "telegram".into(),
        remote_user: user.into(),
        address: "a@x.org".into(),
        via: PairedVia::Invite,
        paired_at: 1,
    };
    let invite = |auth: &str| PersonalInviteRow {
        auth: auth.into(),
        bridge: "telegram".into(),
        remote_user: "42".into(),
        remote_chat: None,
        created_at: 1,
    };
    let sample = |at: i64| MigrationSample {
        bridge: "telegram".into(),
        remote_chat: "-100".into(),
        at,
        remote_members: 2,
        coi_members: 1,
        moved: 1,
    };
    // Under the live lease every write goes through.
    s.note_remote_person("telegram", "-100", "42", "Ann", Seen::Posted, 1).await.expect("note");
    s.pair(&pairing("42")).await.expect("pair");
    s.add_personal_invite(&invite("a1")).await.expect("invite");
    s.record_migration_sample(&sample(1)).await.expect("sample");
    assert!(s.announce_once("telegram", "-100", "closable", 1).await.expect("announce"));

    pg.psql(
        &url,
        &format!("UPDATE coi_lease SET expires_at = clock_timestamp() - interval '1 second' WHERE account = '{ACCT}'"),
    );
    let fenced = |what: &str, r: StoreResult<()>| match r {
        Err(StoreError::Fenced(_)) => {}
        other => panic!("{what}: {other:?}, not fenced"),
    };
    fenced("note", s.note_remote_person("telegram", "-100", "7", "Bob", Seen::Joined, 2).await);
    fenced("move", s.move_remote_people("telegram", "-100", "-1001").await);
    fenced("pair", s.pair(&pairing("7")).await);
    fenced("unpair", s.unpair("telegram", "42").await.map(drop));
    fenced("invite", s.add_personal_invite(&invite("a2")).await);
    fenced("sample", s.record_migration_sample(&sample(2)).await);
    fenced("announce", s.announce_once("telegram", "-100", "other", 2).await.map(drop));
    fenced("clear", s.clear_announcement("telegram", "-100", "closable").await);

    // Nothing landed (reads need no lease).
    assert_eq!(s.remote_people("telegram", "-100").await.expect("people").len(), 1);
    assert_eq!(s.pairings("telegram").await.expect("pairings"), [pairing("42")]);
    assert_eq!(s.personal_invite("a2").await.expect("invite"), None);
    assert_eq!(s.migration_samples("telegram", "-100").await.expect("samples"), [sample(1)]);
    let schema = account_schema(ACCT);
    let announced = pg.psql(&url, &format!("SELECT string_agg(what, ',') FROM {schema}.announcement"));
    assert_eq!(announced, "closable");
}
