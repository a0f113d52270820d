//! An idle worker sleeps until something is due: rows queued in this process wake it, and a retry wakes it when it comes due, with no poll in between.

use super::tests::{RecordingBridge, delivery, from_coi, rig};
use super::*;

#[tokio::test]
async fn a_row_queued_while_the_worker_sleeps_and_a_retry_coming_due_go_without_a_poll() {
    let r = rig().await;
    let bridge = Arc::new(RecordingBridge::default());
    // The first attempt meets a busy network: the row is due again in 2 s.
    bridge
        .script
        .lock()
        .expect("lock")
        .push_back(Err(DeliverError::Retry { reason: "rate limited".into(), after: Some(Duration::from_secs(2)) }));
    // A safety poll of an hour: whatever is delivered below was not found by it.
    let d = delivery(&r, bridge.clone()).with_safety_poll(Duration::from_secs(3600));
    let got = || bridge.got.lock().expect("lock").len();
    let token = CancellationToken::new();
    let feed = async {
        // The worker found nothing and sleeps; a message arrives as ingest records it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        from_coi(&r, 1, "m1@x", ChatMessage { text: "first".into(), ..ChatMessage::default() }).await;
        r.outbound.notifier().queued(["matrix"]);
        // Tried at once (and refused), then delivered when its retry comes due.
        while got() < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(bridge.script.lock().expect("lock").is_empty(), "the first attempt was made");
        from_coi(&r, 2, "m2@x", ChatMessage { text: "second".into(), ..ChatMessage::default() }).await;
        r.outbound.notifier().queued(["matrix"]);
        while got() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
    };
    let done = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(d.run(token.clone()), feed) }).await;
    assert!(done.is_ok(), "delivered {} of 2: the worker waited for its poll", got());
}
