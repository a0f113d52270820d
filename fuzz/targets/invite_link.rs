//! Fuzz target: the SecureJoin invite link parser and the `!coi` / `/coi_` command parser in front of it.

use coi_bridge::coi::securejoin_link::Invite;

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = coi_bridge_api::Command::parse(s);
    let _ = Invite::parse(s);
}
