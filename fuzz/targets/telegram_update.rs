//! Fuzz target: a Telegram `getUpdates` answer, read as the bridge reads it: the batch as
//! teloxide's `Update`s, and one by one when the batch does not parse as a whole.

use serde_json::Value;
use teloxide::types::Update;

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let Some(list) = v.get("result").and_then(Value::as_array) else {
        let _ = serde_json::from_value::<Update>(v);
        return;
    };
    if serde_json::from_value::<Vec<Update>>(Value::Array(list.clone())).is_err() {
        for u in list {
            let _ = serde_json::from_value::<Update>(u.clone());
        }
    }
}
