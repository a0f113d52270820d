//! A bridge whose network comes back gets its waiting queue at once, not when the backoff grown over the outage runs out.

use super::tests::{RecordingBridge, delivery, drive, from_coi, rig};
use super::*;

#[tokio::test]
async fn a_bridge_back_online_gets_its_waiting_queue_at_once() {
    let r = rig().await;
    from_coi(&r, 1, "w1@x", ChatMessage { text: "waited".into(), ..ChatMessage::default() }).await;
    let bridge = Arc::new(RecordingBridge::default());
    // The network is down at the first attempt: the row is due again only in an hour.
    bridge.script.lock().expect("lock").push_back(Err(DeliverError::Retry {
        reason: "connection refused".into(),
        after: Some(Duration::from_secs(3600)),
    }));
    let d = delivery(&r, bridge.clone());
    let back = d.back_online();
    let signal = async {
        while !bridge.script.lock().expect("lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The bridge reports its network reachable again.
        back.notify_one();
    };
    let delivered = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join(drive(&d, || bridge.got.lock().expect("lock").len() == 1), signal),
    )
    .await;
    assert!(delivered.is_ok(), "still waiting for the hour-long backoff after the bridge came back");
}
