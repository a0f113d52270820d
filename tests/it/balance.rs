//! Two daemons on one PostgreSQL spread four accounts of an accounts dir between them (real Dovecot): a second daemon started beside a busy one ends up with half, a clean stop of either gives the other all of them, and a slow start costs no other account its lease.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::postgres::PgServer;
use crate::support::{Daemon, MailServer, eventually, free_port};

const USERS: [&str; 4] = ["alice", "bob", "bridge", "carol"];
const WAIT: Duration = Duration::from_secs(120);

/// One daemon's config dir: the main file (shared store, its own node name and port) and
/// one account file per mail user.
fn config(state: &Path, mail: &MailServer, url: &str, node: &str, port: u16) -> std::path::PathBuf {
    let accounts = state.join("accounts.d");
    std::fs::create_dir_all(&accounts).expect("accounts.d");
    for user in USERS {
        let pw = state.join(format!("{user}.password"));
        std::fs::write(&pw, format!("{user}-secret")).expect("password");
        let text = format!(
            "[account]\naddress = \"{user}@example.org\"\npassword_file = \"{}\"\nencryption = \"opportunistic\"\n\n\
             [imap]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nidle_timeout_secs = 60\n\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nauth = false\n",
            pw.display(),
            mail.imap_port(),
            mail.smtp_port(),
        );
        std::fs::write(accounts.join(format!("{user}.toml")), text).expect("account file");
    }
    let text = format!(
        "[store]\nurl = \"{url}\"\nstate_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [cluster]\nnode = \"{node}\"\nlease_secs = 6\n\n[accounts]\ndir = \"accounts.d\"\n",
        state.display(),
    );
    let path = state.join("coi-bridge.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// The accounts `/ready` says the daemon holds.
async fn held(d: &Daemon) -> Option<Vec<String>> {
    let (_, body) = d.http_get("/ready").await?;
    let r: Value = serde_json::from_str(&body).ok()?;
    Some(r["accounts"].as_object()?.keys().cloned().collect())
}

#[tokio::test]
async fn two_daemons_spread_the_accounts_and_a_clean_stop_hands_all_to_the_other() {
    let mail = mail_server!();
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let root = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (root.path().join("a"), root.path().join("b"));
    let (pa, pb) = (free_port(), free_port());

    let mut a = Daemon::with_config(&sa, config(&sa, &mail, &url, "node-a", pa), pa);
    eventually(WAIT, "daemon A alone runs all four accounts", || async {
        held(&a).await.filter(|h| h.len() == USERS.len())
    })
    .await;

    let mut b = Daemon::with_config(&sb, config(&sb, &mail, &url, "node-b", pb), pb);
    let (ha, hb) = eventually(WAIT, "the accounts spread two and two", || async {
        let (ha, hb) = (held(&a).await?, held(&b).await?);
        (ha.len() == 2 && hb.len() == 2).then_some((ha, hb))
    })
    .await;
    assert!(ha.iter().all(|k| !hb.contains(k)), "no account on both: A {ha:?}, B {hb:?}");
    assert_eq!(a.metric("coi_bridge_cluster_nodes").await, Some(2.0));
    assert_eq!(a.metric("coi_bridge_accounts_handed_over_total").await, Some(2.0), "A handed two over");
    assert_eq!(b.metric("coi_bridge_accounts_handed_over_total").await, Some(0.0));
    // Each account has exactly one IDLE connection in the cluster.
    eventually(WAIT, "two IDLE sessions in each daemon", || async {
        let (ia, ib) = (a.metric("coi_bridge_imap_connected").await?, b.metric("coi_bridge_imap_connected").await?);
        (ia == 2.0 && ib == 2.0).then_some(())
    })
    .await;
    // Stable: a few more lease ticks (2 s each) move nothing.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(held(&a).await.map(|h| h.len()), Some(2));
    assert_eq!(held(&b).await.map(|h| h.len()), Some(2));

    // A clean stop of A: B's share is all four again, and it takes them.
    assert_eq!(a.stop(), Some(0), "A stops cleanly");
    eventually(WAIT, "B runs all four accounts after A stopped", || async {
        held(&b).await.filter(|h| h.len() == USERS.len())
    })
    .await;
    assert_eq!(b.metric("coi_bridge_cluster_nodes").await, Some(1.0));
    assert!(b.is_running());
}

/// The epoch of `account`'s lease, as the lease table has it.
fn epoch(pg: &PgServer, url: &str, account: &str) -> String {
    pg.psql(url, &format!("SELECT epoch FROM public.coi_lease WHERE account = '{account}'")).trim().to_owned()
}

#[tokio::test]
async fn a_slow_account_start_does_not_cost_the_started_accounts_their_leases() {
    use sqlx::Connection as _;
    let mail = mail_server!();
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let root = tempfile::tempdir().expect("tempdir");
    let sa = root.path().join("a");
    let pa = free_port();

    // Bob's schema cannot be migrated while this connection holds its migration lock, so his
    // start (the second in the accounts dir's order) waits, well past two leases of 6 s.
    let mut hold = sqlx::PgConnection::connect(&url).await.expect("connect to PostgreSQL");
    let bob = coi_bridge::store::lease::account_schema("bob@example.org");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(coi_bridge::store::postgres::migration_lock(Some(&bob)))
        .execute(&mut hold)
        .await
        .expect("hold bob's migration lock");

    let a = Daemon::with_config(&sa, config(&sa, &mail, &url, "node-a", pa), pa);
    eventually(WAIT, "alice runs while bob's start waits", || async {
        held(&a).await.filter(|h| h == &["alice@example.org".to_owned()])
    })
    .await;
    let first = epoch(pg, &url, "alice@example.org");
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(held(&a).await, Some(vec!["alice@example.org".to_owned()]), "bob's start still waits");
    drop(hold);

    eventually(WAIT, "every account runs once bob's schema is free", || async {
        held(&a).await.filter(|h| h.len() == USERS.len())
    })
    .await;
    // Two more renewals (every 2 s): a lease that had expired under the wait would be found
    // lost here and taken again with the next epoch.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(a.metric("coi_bridge_leases_lost_total").await, Some(0.0), "no lease lost while bob started");
    assert_eq!(epoch(pg, &url, "alice@example.org"), first, "alice kept her lease (same epoch)");
    assert_eq!(held(&a).await.map(|h| h.len()), Some(USERS.len()));
}
