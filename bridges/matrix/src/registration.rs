//! The appservice registration (YAML for the homeserver): generated once with fresh tokens, read back at start.

use std::fmt;

use base64::Engine as _;
use rand::RngCore as _;

/// What the homeserver and the bridge share.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    pub id: String,
    /// Where the homeserver reaches the bridge's transaction endpoint.
    pub url: String,
    /// The bridge authenticates to the homeserver with this.
    pub as_token: String,
    /// The homeserver authenticates to the bridge with this.
    pub hs_token: String,
    pub sender_localpart: String,
    /// Ghost localparts start with this (`coi_` gives `@coi_alice=example.org:hs`).
    pub ghost_prefix: String,
    pub server_name: String,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("sender_localpart", &self.sender_localpart)
            .field("ghost_prefix", &self.ghost_prefix)
            .field("as_token", &"[redacted]")
            .field("hs_token", &"[redacted]")
            .finish()
    }
}

fn token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if "\\.+*?()|[]{}^$".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

/// A YAML double-quoted scalar, on one line whatever `s` holds.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // Other control characters, and the line breaks YAML knows beyond \n and \r.
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reads back what [`q`] wrote (and plain unquoted scalars as they are).
fn unq(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else { return Some(v.to_owned()) };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// The ghost localpart (after the prefix) for an address: injective, so two addresses
/// never share a ghost, and the same as before for plain addresses
/// (`alice@example.org` → `alice=example.org`). Matrix localparts allow `a-z 0-9 . _ = - /`:
/// `@` becomes `=`, `_` becomes `__`, and every other byte (upper case, `+`, `=`, non-ASCII)
/// becomes `_` and two hex digits (`A` → `_41`, `+` → `_2b`).
pub fn ghost_localpart(addr: &str) -> String {
    let mut out = String::with_capacity(addr.len());
    for b in addr.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'/' => out.push(b as char),
            b'@' => out.push('='),
            b'_' => out.push_str("__"),
            other => out.push_str(&format!("_{other:02x}")),
        }
    }
    out
}

/// The inverse of [`ghost_localpart`]; `None` for what it never writes.
pub fn addr_of_localpart(local: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(local.len());
    let mut it = local.bytes();
    while let Some(b) = it.next() {
        match b {
            b'=' => bytes.push(b'@'),
            b'_' => match it.next()? {
                b'_' => bytes.push(b'_'),
                hi => {
                    let lo = it.next()?;
                    let hex = [hi, lo];
                    let hex = std::str::from_utf8(&hex).ok()?;
                    if hex.bytes().any(|h| h.is_ascii_uppercase()) {
                        return None;
                    }
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                }
            },
            other => bytes.push(other),
        }
    }
    let addr = String::from_utf8(bytes).ok()?;
    // Only what ghost_localpart writes: one spelling per address.
    (ghost_localpart(&addr) == local).then_some(addr)
}

impl Registration {
    /// A new registration with fresh random tokens.
    pub fn generate(id: &str, url: &str, server_name: &str, sender_localpart: &str, ghost_prefix: &str) -> Self {
        Self {
            id: id.to_owned(),
            url: url.to_owned(),
            as_token: token(),
            hs_token: token(),
            sender_localpart: sender_localpart.to_owned(),
            ghost_prefix: ghost_prefix.to_owned(),
            server_name: server_name.to_owned(),
        }
    }

    /// The YAML the homeserver loads (`app_service_config_files`). Its user namespace
    /// covers the ghosts (`@<ghost_prefix>.*`) and the bots of every account sharing the
    /// registration (`@<sender_localpart>.*`: `coibot`, `coibot_shop`, `coibot2` …); see
    /// [`Registration::covers_bot`].
    pub fn to_yaml(&self) -> String {
        let users = format!("@{}.*:{}", regex_escape(&self.ghost_prefix), regex_escape(&self.server_name));
        let bots = format!("@{}.*:{}", regex_escape(&self.sender_localpart), regex_escape(&self.server_name));
        let aliases = format!("#{}.*:{}", regex_escape(&self.ghost_prefix), regex_escape(&self.server_name));
        format!(
            "# coi-bridge appservice registration. Generated by `coi-bridge generate-registration`;\n\
             # give this file to the homeserver (app_service_config_files) and keep it secret.\n\
             id: {}\nurl: {}\nas_token: {}\nhs_token: {}\nsender_localpart: {}\nrate_limited: false\nreceive_ephemeral: true\n\
             namespaces:\n  users:\n    - exclusive: true\n      regex: {}\n    - exclusive: true\n      regex: {}\n  aliases:\n    - exclusive: true\n      regex: {}\n  rooms: []\n\
             # coi-bridge's own keys (the homeserver ignores them)\nde.coi-bridge.ghost_prefix: {}\nde.coi-bridge.server_name: {}\n",
            q(&self.id),
            q(&self.url),
            q(&self.as_token),
            q(&self.hs_token),
            q(&self.sender_localpart),
            q(&users),
            q(&bots),
            q(&aliases),
            q(&self.ghost_prefix),
            q(&self.server_name),
        )
    }

    /// Reads back a file written by [`Registration::to_yaml`] (top-level scalar keys).
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let get = |key: &str| -> Result<String, String> {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(str::trim))
                .and_then(unq)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("registration file: no `{key}`"))
        };
        Ok(Self {
            id: get("id")?,
            url: get("url")?,
            as_token: get("as_token")?,
            hs_token: get("hs_token")?,
            sender_localpart: get("sender_localpart")?,
            ghost_prefix: get("de.coi-bridge.ghost_prefix").unwrap_or_else(|_| "coi_".into()),
            server_name: get("de.coi-bridge.server_name")?,
        })
    }

    /// Whether a bridge's bot may be `@<localpart>`: the registration's own sender, or a
    /// user in the namespace [`Registration::to_yaml`] writes (starting with the sender's
    /// localpart or with the ghost prefix). What the operator keeps in step: every
    /// account's `bot_localpart` on one registration starts with its `sender_localpart`.
    pub fn covers_bot(&self, localpart: &str) -> bool {
        localpart.starts_with(&self.sender_localpart) || localpart.starts_with(&self.ghost_prefix)
    }

    /// The ghost MXID for a COI address: `@<prefix><local>=<domain>:<server>`, escaped by
    /// [`ghost_localpart`]. The core hands over addresses in lower case, as Delta Chat
    /// compares them; the escaping itself keeps case apart.
    pub fn ghost_for(&self, addr: &str) -> String {
        format!("@{}{}:{}", self.ghost_prefix, ghost_localpart(addr), self.server_name)
    }

    /// The COI address a ghost speaks for (the inverse of [`Registration::ghost_for`]);
    /// `None` for other users.
    pub fn addr_of_ghost(&self, mxid: &str) -> Option<String> {
        addr_of_ghost(&self.ghost_prefix, &self.server_name, mxid)
    }
}

/// See [`Registration::addr_of_ghost`].
pub fn addr_of_ghost(ghost_prefix: &str, server_name: &str, mxid: &str) -> Option<String> {
    let (local, server) = mxid.strip_prefix('@')?.split_once(':')?;
    if server != server_name {
        return None;
    }
    let addr = addr_of_localpart(local.strip_prefix(ghost_prefix)?)?;
    let (user, domain) = addr.rsplit_once('@')?;
    (!user.is_empty() && !domain.is_empty()).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn distinct_addresses_get_distinct_ghosts(a in "(?s).{0,40}", b in "(?s).{0,40}") {
            prop_assume!(a != b);
            prop_assert_ne!(ghost_localpart(&a), ghost_localpart(&b));
        }

        #[test]
        fn ghosts_are_valid_localparts_and_parse_back(addr in "(?s).{0,40}") {
            let local = ghost_localpart(&addr);
            prop_assert!(local.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/".contains(&b)), "{}", local);
            prop_assert_eq!(addr_of_localpart(&local), Some(addr));
        }

        #[test]
        fn address_like_ghosts_round_trip(user in "[a-zA-Z0-9_.+=!#%-]{1,20}", domain in "[a-zA-Z0-9.-]{1,20}") {
            let r = Registration::generate("coi", "http://x", "hs.example", "coibot", "coi_");
            let addr = format!("{user}@{domain}");
            prop_assert_eq!(r.addr_of_ghost(&r.ghost_for(&addr)), Some(addr));
        }

        #[test]
        fn registration_yaml_round_trips(
            id in "(?s).{1,20}", url in "(?s).{1,40}", as_token in "(?s).{1,40}", hs_token in "(?s).{1,40}",
            sender in "(?s).{1,20}", prefix in "(?s).{1,10}", server in "(?s).{1,30}",
        ) {
            let r = Registration {
                id, url, as_token, hs_token, sender_localpart: sender, ghost_prefix: prefix, server_name: server,
            };
            prop_assert_eq!(Registration::from_yaml(&r.to_yaml()), Ok(r));
        }
    }

    #[test]
    fn yaml_round_trips_and_tokens_are_fresh_and_hidden() {
        let a = Registration::generate("coi", "http://127.0.0.1:29331", "example.org", "coibot", "coi_");
        let b = Registration::generate("coi", "http://127.0.0.1:29331", "example.org", "coibot", "coi_");
        assert_ne!(a.as_token, b.as_token);
        assert_ne!(a.as_token, a.hs_token);
        let yaml = a.to_yaml();
        assert!(yaml.contains("regex: \"@coi_.*:example\\\\.org\""), "{yaml}");
        assert!(yaml.contains("regex: \"@coibot.*:example\\\\.org\""), "every account's bot: {yaml}");
        assert!(a.covers_bot("coibot") && a.covers_bot("coibot_shop") && a.covers_bot("coi_bot2"));
        assert!(!a.covers_bot("shopbot"), "outside the namespace");
        assert_eq!(Registration::from_yaml(&yaml).expect("parses"), a);
        assert!(!format!("{a:?}").contains(&a.as_token));
        assert!(Registration::from_yaml("id: x").unwrap_err().contains("url"));
    }

    #[test]
    fn ghosts_are_named_after_the_address() {
        let r = Registration::generate("coi", "http://x", "hs.example", "coibot", "coi_");
        // Plain addresses keep the ghosts they always had.
        assert_eq!(r.ghost_for("alice@example.org"), "@coi_alice=example.org:hs.example");
        assert_eq!(r.ghost_for("first.last-1@mail.example.org"), "@coi_first.last-1=mail.example.org:hs.example");
        // Everything else is escaped, so no two addresses share a ghost.
        let ghosts: Vec<String> =
            ["a+b@x.org", "a_b@x.org", "a=b@x.org", "A+b@x.org", "a_2bb@x.org", "a@b@x.org", "a@b=x.org"]
                .iter()
                .map(|a| r.ghost_for(a))
                .collect();
        assert_eq!(ghosts[0], "@coi_a_2bb=x.org:hs.example");
        assert_eq!(ghosts[1], "@coi_a__b=x.org:hs.example");
        assert_eq!(ghosts[2], "@coi_a_3db=x.org:hs.example");
        assert_eq!(ghosts[3], "@coi__41_2bb=x.org:hs.example");
        let distinct: std::collections::HashSet<&String> = ghosts.iter().collect();
        assert_eq!(distinct.len(), ghosts.len(), "{ghosts:?}");
        assert_eq!(r.addr_of_ghost("@coi_alice=example.org:hs.example").as_deref(), Some("alice@example.org"));
        assert_eq!(r.addr_of_ghost("@coi_a_3db=x.org:hs.example").as_deref(), Some("a=b@x.org"));
        assert_eq!(r.addr_of_ghost("@coi_a_2bb=x.org:hs.example").as_deref(), Some("a+b@x.org"));
        // Spellings the bridge never writes are nobody's ghost.
        assert_eq!(r.addr_of_ghost("@coi_a_2Bb=x.org:hs.example"), None, "upper-case hex");
        assert_eq!(r.addr_of_ghost("@coi_a_61=x.org:hs.example"), None, "an escaped plain letter");
        assert_eq!(r.addr_of_ghost("@coi_a_=x.org:hs.example"), None, "a cut escape");
        assert_eq!(r.addr_of_ghost("@coi_alice:hs.example"), None, "no domain");
        assert_eq!(r.addr_of_ghost("@alice:hs.example"), None);
        assert_eq!(r.addr_of_ghost("@coi_alice=example.org:elsewhere"), None);
    }
}
