//! Fuzz target: an appservice transaction body as the endpoint reads it (JSON → room and
//! ephemeral events, as `appservice::transaction` does) and each event's pure translation
//! steps: its text (`inbound::text_of`: the HTML converter or the reply fallback strip),
//! `!coi` commands, and the redaction authority check on the event's content.

use coi_bridge_matrix::{authority, inbound};
use serde_json::Value;

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let list = |k: &str| v.get(k).and_then(Value::as_array).cloned();
    let ephemeral = list("ephemeral").or_else(|| list("de.sorunome.msc2409.ephemeral"));
    for ev in list("events").into_iter().chain(ephemeral).flatten() {
        let content = &ev["content"];
        if let Some(text) = inbound::text_of(content)
            && let Some(words) = text.strip_prefix(inbound::PREFIX)
        {
            let _ = coi_bridge_api::Command::parse(words);
        }
        let sender = ev["sender"].as_str().unwrap_or("");
        let _ = authority::may_redact_others(Some(content), Some(&ev), sender);
    }
}
