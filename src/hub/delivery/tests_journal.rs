//! The send journal: a post the side took is never posted again after a kill before the outbox mark, nothing is posted while the store cannot record it, and an unfinished post is posted again and counted.

use super::tests::{RecordingBridge, delivery, drive, from_coi, rig};
use super::*;
use crate::store::OutboxState;

fn db(r: &super::tests::Rig) -> rusqlite::Connection {
    rusqlite::Connection::open(r._dir.path().join("s.db")).expect("open")
}

fn done(r: &super::tests::Rig) -> bool {
    let db = db(r);
    db.query_row("SELECT state FROM outbox WHERE target = 'matrix'", [], |row| row.get::<_, String>(0))
        .is_ok_and(|s| s == "done")
}

#[tokio::test]
async fn a_post_the_side_took_is_not_posted_again_when_the_outbox_mark_was_lost() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: "once".into(), ..ChatMessage::default() }).await;
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    drive(&d, || done(&r)).await;
    assert_eq!(bridge.got.lock().expect("lock").len(), 1);
    // The daemon was killed after the post and before the mark (the store was full then):
    // the row is pending again and its id map is gone.
    db(&r)
        .execute_batch(
            "UPDATE outbox SET state = 'pending', next_attempt_at = 0 WHERE target = 'matrix';
             DELETE FROM message_map WHERE bridge = 'matrix';",
        )
        .expect("lose the mark");
    let again = delivery(&r, bridge.clone());
    drive(&again, || done(&r)).await;
    assert_eq!(bridge.got.lock().expect("lock").len(), 1, "posted twice: Telegram would show it twice");
    let copies = r.store.remote_copies("m1@x", "matrix").await.expect("map");
    assert_eq!(copies.first().map(|c| c.remote_id.as_str()), Some("$ev1"), "mapped from the journal");
}

#[tokio::test]
async fn nothing_is_posted_while_the_store_cannot_record_the_post() {
    let r = rig().await;
    // Every write to the journal fails, as on a full disk.
    db(&r)
        .execute_batch(
            "CREATE TRIGGER full BEFORE INSERT ON send_journal BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        )
        .expect("trigger");
    from_coi(&r, 1, "m1@x", ChatMessage { text: "held".into(), ..ChatMessage::default() }).await;
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    let retries = r.metrics.outbox.with_label_values(&["matrix", "retry"]);
    let held = tokio::time::timeout(
        Duration::from_secs(30),
        drive(&d, || retries.get() >= 1 || !bridge.got.lock().expect("lock").is_empty()),
    )
    .await;
    assert!(held.is_ok(), "neither held back nor posted");
    assert!(bridge.got.lock().expect("lock").is_empty(), "posted though it could not be recorded");
    assert!(matches!(r.store.outbox_state("matrix", "m1@x").await.expect("state"), Some(OutboxState::Pending { .. })));
    db(&r).execute_batch("DROP TRIGGER full").expect("space again");
    drive(&d, || done(&r)).await;
    assert_eq!(bridge.got.lock().expect("lock").len(), 1, "posted once the store could record it");
}

#[tokio::test]
async fn a_post_a_killed_daemon_had_started_is_posted_again_and_counted() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: "maybe".into(), ..ChatMessage::default() }).await;
    // A daemon began the post and died before the side answered.
    db(&r)
        .execute_batch("INSERT INTO send_journal (bridge, key, started_at) VALUES ('matrix', 'coi-m1@x', 1)")
        .expect("unfinished");
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    drive(&d, || done(&r)).await;
    assert_eq!(bridge.got.lock().expect("lock").len(), 1, "not lost: posted again");
    assert_eq!(r.metrics.outbox.with_label_values(&["matrix", "unconfirmed"]).get(), 1);
}

#[tokio::test]
async fn a_refused_post_is_a_fresh_one_when_tried_again() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: "later".into(), ..ChatMessage::default() }).await;
    let bridge = Arc::new(RecordingBridge::default());
    bridge.script.lock().expect("lock").push_back(Err(DeliverError::Retry { reason: "502".into(), after: None }));
    let d = delivery(&r, bridge.clone());
    drive(&d, || done(&r)).await;
    assert_eq!(bridge.got.lock().expect("lock").len(), 1);
    assert_eq!(
        r.metrics.outbox.with_label_values(&["matrix", "unconfirmed"]).get(),
        0,
        "a refusal is no unfinished post"
    );
}
