//! Fuzz target: the Matrix `formatted_body` HTML → text converter.

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = coi_bridge_matrix::html::to_text(s);
}
