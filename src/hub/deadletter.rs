//! Remote events a bridge set aside: recorded in the store with their reason, counted, logged; the bridge moves on past them.

use coi_bridge_api::{BridgeId, DeadLetter, SubmitError};

use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::deadletter::DeadLetterRow;

/// Records `letter` for bridge `from`. `Err(Retry)` only when the store cannot take it now.
pub async fn set_aside(
    store: &dyn Store,
    metrics: &Metrics,
    from: &BridgeId,
    letter: DeadLetter,
) -> Result<(), SubmitError> {
    let row = DeadLetterRow {
        bridge: from.as_str().to_owned(),
        remote_chat: letter.chat.as_ref().map(|c| c.as_str().to_owned()),
        event: letter.event.clone(),
        kind: letter.kind.as_str().to_owned(),
        reason: letter.reason.clone(),
        payload: letter.payload,
        created_at: chrono::Utc::now().timestamp(),
    };
    store.record_dead_letter(&row).await.map_err(|e| SubmitError::Retry(e.to_string()))?;
    metrics.dead_letters.with_label_values(&[from.as_str(), letter.kind.as_str()]).inc();
    tracing::warn!(
        bridge = %from,
        chat = row.remote_chat.as_deref().unwrap_or("-"),
        event = %letter.event,
        kind = letter.kind.as_str(),
        reason = %letter.reason,
        "remote event set aside (dead letter); the ones behind it go on"
    );
    Ok(())
}
