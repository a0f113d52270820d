//! Fuzz target: `coi::parse::parse` on arbitrary mail bytes (the bridge's address is public).

use coi_bridge::coi::{Limits, parse};

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let _ = parse(data, &Limits::default());
}
