//! SecureJoin invite links (`https://i.delta.chat/#FPR&a=…&n=…&i=…&s=…`, groups add `x=` and `g=`): parse and render.

/// What an invite link carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The inviter's key fingerprint: 40 upper-case hex digits.
    pub fingerprint: String,
    /// The inviter's address.
    pub addr: String,
    /// The inviter's display name.
    pub name: String,
    /// `i=`: identifies the invite (sent back in the request).
    pub invite_number: String,
    /// `s=`: the secret that proves the joiner scanned the link.
    pub auth: String,
    /// `x=` and `g=`: the group to join, if any.
    pub group: Option<InviteGroup>,
    /// `v=`: the protocol version the inviter speaks (3 allows `vc-request-pubkey`).
    pub version: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteGroup {
    pub id: String,
    pub name: String,
}

const HTTPS_PREFIX: &str = "https://i.delta.chat/#";
const OPENPGP_PREFIX: &str = "OPENPGP4FPR:";

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Invite {
    /// Parses an `https://i.delta.chat/#…` or `OPENPGP4FPR:…#…` link.
    pub fn parse(link: &str) -> Result<Self, String> {
        let link = link.trim();
        let rest = if let Some(r) = link.strip_prefix(HTTPS_PREFIX) {
            r.to_owned()
        } else if let Some(r) = link
            .get(..OPENPGP_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(OPENPGP_PREFIX))
            .map(|_| &link[OPENPGP_PREFIX.len()..])
        {
            // `get` is None when byte 12 is inside a character: no panic on hostile input.
            r.replacen('#', "&", 1)
        } else {
            return Err("not an invite link: expected https://i.delta.chat/#… or OPENPGP4FPR:…".into());
        };
        let mut parts = rest.split('&');
        let fingerprint = parts.next().unwrap_or("").to_ascii_uppercase();
        if fingerprint.len() != 40 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("invite link: {fingerprint:?} is not a 40-digit key fingerprint"));
        }
        let (mut addr, mut name, mut inv, mut auth, mut gid, mut gname, mut version) =
            (None, None, None, None, None, None, None);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else { continue };
            let v = decode(v);
            match k {
                "a" => addr = Some(v.to_lowercase()),
                "n" => name = Some(v),
                "i" => inv = Some(v),
                "s" => auth = Some(v),
                "x" => gid = Some(v),
                "g" => gname = Some(v),
                "v" => version = v.parse().ok(),
                _ => {}
            }
        }
        let addr = addr.filter(|a| a.contains('@')).ok_or("invite link: no inviter address (a=)")?;
        let invite_number = inv.filter(|s| !s.is_empty()).ok_or("invite link: no invite number (i=)")?;
        let auth = auth.filter(|s| !s.is_empty()).ok_or("invite link: no auth secret (s=)")?;
        let group = gid.map(|id| InviteGroup { id, name: gname.unwrap_or_default() });
        Ok(Self { fingerprint, addr, name: name.unwrap_or_default(), invite_number, auth, group, version })
    }

    /// The link to hand out.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{HTTPS_PREFIX}{}&v={}&i={}&s={}&a={}&n={}",
            self.fingerprint,
            self.version.unwrap_or(3),
            encode(&self.invite_number),
            encode(&self.auth),
            encode(&self.addr),
            encode(&self.name)
        );
        if let Some(g) = &self.group {
            s.push_str(&format!("&x={}&g={}", encode(&g.id), encode(&g.name)));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(group: bool) -> Invite {
        Invite {
            fingerprint: "0123456789ABCDEF0123456789ABCDEF01234567".into(),
            addr: "bridge@example.org".into(),
            name: "COI Bridge & Friends".into(),
            invite_number: "inv-Abc_123".into(),
            auth: "s3cr3t+/=".into(),
            group: group.then(|| InviteGroup { id: "Xk3_mQ9-pL2vR8tY".into(), name: "Team 🚀".into() }),
            version: Some(3),
        }
    }

    #[test]
    fn round_trips() {
        for g in [false, true] {
            let i = invite(g);
            assert_eq!(Invite::parse(&i.render()), Ok(i));
        }
    }

    #[test]
    fn legacy_openpgp4fpr_form() {
        let i =
            Invite::parse("OPENPGP4FPR:0123456789abcdef0123456789abcdef01234567#a=alice%40example.org&n=Alice&i=x&s=y")
                .expect("parses");
        assert_eq!(i.addr, "alice@example.org");
        assert_eq!(i.fingerprint, "0123456789ABCDEF0123456789ABCDEF01234567");
        assert_eq!(i.version, None);
    }

    /// Issue #10: `!coi link` with a multi-byte character across byte 12 panicked.
    #[test]
    fn multi_byte_characters_at_the_prefix_end_are_errors_not_panics() {
        for link in ["OPENPGP4FPRä", "OPENPGP4FPR🚀#a=b", "OPENPGP4FP€:", "éOPENPGP4FPR:", "ä"] {
            assert!(Invite::parse(link).unwrap_err().contains("not an invite link"), "{link:?}");
        }
        let fpr = "0123456789ABCDEF0123456789ABCDEF01234567";
        assert!(Invite::parse(&format!("openpgp4fpr:{fpr}#a=a%40b&i=ä&s=ö")).is_ok());
        assert!(Invite::parse(&format!("OPENPGP4FPR:ä{fpr}#a=a@b&i=x&s=y")).unwrap_err().contains("fingerprint"));
    }

    #[test]
    fn bad_links_say_why() {
        assert!(Invite::parse("https://example.org/").unwrap_err().contains("not an invite link"));
        assert!(Invite::parse("https://i.delta.chat/#1234&a=a@b&i=x&s=y").unwrap_err().contains("fingerprint"));
        assert!(
            Invite::parse("https://i.delta.chat/#0123456789ABCDEF0123456789ABCDEF01234567&a=a@b&i=x")
                .unwrap_err()
                .contains("s=")
        );
        assert!(Invite::parse("https://i.delta.chat/#0123456789ABCDEF0123456789ABCDEF01234567&a=a@b&i=x&s=%").is_ok());
    }
}
