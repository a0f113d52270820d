//! Which bridge of a shared appservice endpoint an event belongs to: an in-memory room → bridge index, filled when a bridge starts (its portals, the rooms its bot is in) and kept by portal creation and its bot's joins and leaves; an invitation goes to the bridge whose bot is invited.
//!
//! One registration serves every account's Matrix bridge on a homeserver, so one
//! transaction can hold events for several of them. Each event is looked up once in
//! memory (no store query, no loop over the bridges); an event no bridge has is
//! nobody's, and is never handed to all of them.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// A bridge's place in an [`Index`], for as long as it is a member.
pub type MemberId = u64;

/// One bridge of the endpoint: its bot, what it holds, and the rooms it has.
struct Entry<T> {
    bot: String,
    value: T,
    /// Its rooms are known (portals and the bot's rooms were read at start).
    ready: bool,
    portals: HashSet<String>,
    bot_rooms: HashSet<String>,
}

/// The bridges of one endpoint and the rooms each has. `T` is what the endpoint keeps
/// per bridge (its sink, its state).
pub struct Index<T> {
    next: MemberId,
    members: BTreeMap<MemberId, Entry<T>>,
    /// Bot MXID → the bridge it belongs to.
    bots: HashMap<String, MemberId>,
    /// Room → the bridges that have it (a portal of theirs, or their bot is in it).
    rooms: HashMap<String, Vec<MemberId>>,
    /// A lone bridge gets every event (one account, one daemon). Off where another daemon
    /// may have the room (the endpoint relays what its bridges do not have).
    pub one_takes_all: bool,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Self { next: 1, members: BTreeMap::new(), bots: HashMap::new(), rooms: HashMap::new(), one_takes_all: true }
    }
}

impl<T> Index<T> {
    /// Adds a bridge whose bot is `bot`. `Err` holds the member that has that bot already
    /// (two bridges cannot share one bot: nothing could tell their rooms apart).
    pub fn add(&mut self, bot: &str, value: T) -> Result<MemberId, &T> {
        if let Some(other) = self.bots.get(bot) {
            return Err(&self.members[other].value);
        }
        let id = self.next;
        self.next += 1;
        self.bots.insert(bot.to_owned(), id);
        let entry =
            Entry { bot: bot.to_owned(), value, ready: false, portals: HashSet::new(), bot_rooms: HashSet::new() };
        self.members.insert(id, entry);
        Ok(id)
    }

    /// Takes a bridge out (its account stopped); its rooms are nobody's from now on.
    pub fn remove(&mut self, id: MemberId) {
        let Some(entry) = self.members.remove(&id) else { return };
        self.bots.remove(&entry.bot);
        for room in entry.portals.iter().chain(&entry.bot_rooms) {
            if let Some(ids) = self.rooms.get_mut(room) {
                ids.retain(|m| *m != id);
                if ids.is_empty() {
                    self.rooms.remove(room);
                }
            }
        }
    }

    pub fn get(&self, id: MemberId) -> Option<&T> {
        self.members.get(&id).map(|e| &e.value)
    }

    /// Every room some bridge has.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }

    /// Every bridge's bot.
    pub fn bots(&self) -> Vec<String> {
        self.bots.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether every bridge has read its rooms (until then an unknown room may be one of
    /// theirs).
    pub fn all_ready(&self) -> bool {
        self.members.values().all(|e| e.ready)
    }

    /// A bridge's rooms at start: its portals (from its store) and the rooms its bot is
    /// in (from the homeserver). Marks it ready.
    pub fn fill(
        &mut self,
        id: MemberId,
        portals: impl IntoIterator<Item = String>,
        bot_rooms: impl IntoIterator<Item = String>,
    ) {
        for room in portals {
            self.portal(id, &room);
        }
        for room in bot_rooms {
            self.bot_in(id, &room, true);
        }
        if let Some(e) = self.members.get_mut(&id) {
            e.ready = true;
        }
    }

    /// `room` is a portal of the bridge (it created or delivered to it).
    pub fn portal(&mut self, id: MemberId, room: &str) {
        let Some(e) = self.members.get_mut(&id) else { return };
        if e.portals.insert(room.to_owned()) {
            self.link(id, room);
        }
    }

    /// The bridge's bot joined (`true`) or left (`false`) `room`.
    pub fn bot_in(&mut self, id: MemberId, room: &str, joined: bool) {
        let Some(e) = self.members.get_mut(&id) else { return };
        if joined {
            if e.bot_rooms.insert(room.to_owned()) {
                self.link(id, room);
            }
        } else if e.bot_rooms.remove(room) && !e.portals.contains(room) {
            self.unlink(id, room);
        }
    }

    fn link(&mut self, id: MemberId, room: &str) {
        let ids = self.rooms.entry(room.to_owned()).or_default();
        if !ids.contains(&id) {
            ids.push(id);
            ids.sort_unstable();
        }
    }

    fn unlink(&mut self, id: MemberId, room: &str) {
        if let Some(ids) = self.rooms.get_mut(room) {
            ids.retain(|m| *m != id);
            if ids.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// The bridges `ev` belongs to (none: nobody's), keeping the index up to date with
    /// what the event says about a bot's membership. Events are routed in the order the
    /// homeserver sent them, so a bot's join routes the messages after it.
    ///
    /// - A membership event about a bridge's bot (an invitation, its join or leave): that
    ///   bridge, and the room's bridges.
    /// - Any other event with a room: the bridges that have the room.
    /// - With one bridge on the endpoint: that bridge, whatever the event (one account
    ///   behaves as it did before the endpoint was shared).
    pub fn route(&mut self, ev: &Value) -> Vec<MemberId> {
        let room = ev["room_id"].as_str();
        let mut out = room.and_then(|r| self.rooms.get(r)).cloned().unwrap_or_default();
        if ev["type"] == "m.room.member"
            && let (Some(room), Some(bot)) = (room, ev["state_key"].as_str())
            && let Some(&id) = self.bots.get(bot)
        {
            if !out.contains(&id) {
                out.push(id);
                out.sort_unstable();
            }
            match ev["content"]["membership"].as_str() {
                Some("join") => self.bot_in(id, room, true),
                Some("leave" | "ban") => self.bot_in(id, room, false),
                _ => {}
            }
        }
        if self.one_takes_all && self.members.len() == 1 {
            return self.members.keys().copied().collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(room: &str) -> Value {
        json!({"type": "m.room.message", "room_id": room, "sender": "@mara:hs", "content": {"body": "hi"}})
    }

    fn member(room: &str, who: &str, membership: &str) -> Value {
        json!({"type": "m.room.member", "room_id": room, "sender": "@mara:hs", "state_key": who,
               "content": {"membership": membership}})
    }

    #[test]
    fn each_room_goes_to_its_bridge_and_a_room_of_nobody_to_none() {
        let mut ix: Index<&str> = Index::default();
        let a = ix.add("@bot_a:hs", "a").expect("a");
        let b = ix.add("@bot_b:hs", "b").expect("b");
        assert!(!ix.all_ready());
        ix.fill(a, ["!portal_a".to_owned()], ["!joined_a".to_owned()]);
        ix.fill(b, ["!portal_b".to_owned()], Vec::new());
        assert!(ix.all_ready());
        assert_eq!(ix.route(&msg("!portal_a")), vec![a]);
        assert_eq!(ix.route(&msg("!joined_a")), vec![a]);
        assert_eq!(ix.route(&msg("!portal_b")), vec![b]);
        assert_eq!(ix.route(&msg("!elsewhere")), Vec::<MemberId>::new(), "nobody's, not everybody's");
        assert_eq!(ix.route(&json!({"type": "m.presence"})), Vec::<MemberId>::new());
    }

    #[test]
    fn an_invitation_goes_to_the_invited_bot_and_its_join_brings_the_room() {
        let mut ix: Index<&str> = Index::default();
        let a = ix.add("@bot_a:hs", "a").expect("a");
        let b = ix.add("@bot_b:hs", "b").expect("b");
        assert_eq!(ix.route(&member("!new", "@bot_b:hs", "invite")), vec![b]);
        assert_eq!(ix.route(&msg("!new")), Vec::<MemberId>::new(), "an invitation alone does not bring the room");
        assert_eq!(ix.route(&member("!new", "@bot_b:hs", "join")), vec![b]);
        assert_eq!(ix.route(&msg("!new")), vec![b]);
        // A's bot invited into B's room: both see that, then both have the room.
        assert_eq!(ix.route(&member("!new", "@bot_a:hs", "invite")), vec![a, b]);
        assert_eq!(ix.route(&member("!new", "@bot_a:hs", "join")), vec![a, b]);
        assert_eq!(ix.route(&msg("!new")), vec![a, b]);
        // B's bot is kicked: the kick reaches B, later events only A.
        assert_eq!(ix.route(&member("!new", "@bot_b:hs", "leave")), vec![a, b]);
        assert_eq!(ix.route(&msg("!new")), vec![a]);
        // Someone else's membership is the room's bridges' business only.
        assert_eq!(ix.route(&member("!new", "@carol:hs", "join")), vec![a]);
    }

    #[test]
    fn a_portal_outlives_its_bot_leaving_and_a_removed_bridge_has_nothing() {
        let mut ix: Index<&str> = Index::default();
        let a = ix.add("@bot_a:hs", "a").expect("a");
        let b = ix.add("@bot_b:hs", "b").expect("b");
        ix.portal(a, "!p");
        ix.bot_in(a, "!p", true);
        ix.bot_in(a, "!p", false);
        assert_eq!(ix.route(&msg("!p")), vec![a], "still a portal: ghosts post there");
        ix.portal(b, "!q");
        let c = ix.add("@bot_c:hs", "c").expect("c");
        ix.remove(a);
        assert_eq!(ix.route(&msg("!p")), Vec::<MemberId>::new(), "a stopped bridge's room is nobody's");
        assert_eq!(ix.route(&msg("!q")), vec![b]);
        assert!(ix.get(a).is_none());
        ix.remove(c);
        assert_eq!(ix.route(&msg("!p")), vec![b], "one bridge left: it gets everything");
        // Its bot is free again.
        assert!(ix.add("@bot_a:hs", "a again").is_ok());
    }

    #[test]
    fn two_bridges_cannot_share_a_bot() {
        let mut ix: Index<&str> = Index::default();
        ix.add("@coibot:hs", "first").expect("first");
        assert_eq!(ix.add("@coibot:hs", "second").err(), Some(&"first"));
    }

    #[test]
    fn one_bridge_gets_every_event_as_before() {
        let mut ix: Index<&str> = Index::default();
        let a = ix.add("@coibot:hs", "a").expect("a");
        assert_eq!(ix.route(&msg("!never_seen")), vec![a]);
        assert_eq!(ix.route(&json!({"type": "m.receipt", "content": {}})), vec![a]);
    }
}
