//! The Autocrypt header (`addr=…; prefer-encrypt=mutual; keydata=…`) and Autocrypt-Gossip: parse and render, no crypto.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// One Autocrypt or Autocrypt-Gossip header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutocryptHeader {
    /// Lower-cased address the key belongs to.
    pub addr: String,
    /// `prefer-encrypt=mutual`.
    pub prefer_mutual: bool,
    /// The binary (transferable) public key.
    pub keydata: Vec<u8>,
}

impl AutocryptHeader {
    /// Parses a header value. Unknown critical attributes (not starting with `_`) make it
    /// invalid, as the Autocrypt spec says.
    pub fn parse(value: &str) -> Option<Self> {
        let mut addr = None;
        let mut prefer_mutual = false;
        let mut keydata = None;
        for attr in value.split(';') {
            let attr = attr.trim();
            if attr.is_empty() {
                continue;
            }
            let (k, v) = attr.split_once('=')?;
            match k.trim().to_ascii_lowercase().as_str() {
                "addr" => addr = Some(v.trim().to_lowercase()),
                "prefer-encrypt" => prefer_mutual = v.trim().eq_ignore_ascii_case("mutual"),
                "keydata" => {
                    let clean: String = v.chars().filter(|c| !c.is_whitespace()).collect();
                    keydata = Some(B64.decode(clean).ok()?);
                }
                k if k.starts_with('_') => {}
                _ => return None,
            }
        }
        let addr = addr.filter(|a| a.contains('@'))?;
        let keydata = keydata.filter(|k| !k.is_empty())?;
        Some(Self { addr, prefer_mutual, keydata })
    }

    /// The header value; `keydata` is one long base64 word that header folding splits
    /// at the spaces inserted every 76 characters.
    pub fn render(&self) -> String {
        let b64 = B64.encode(&self.keydata);
        let chunks: Vec<&str> = b64.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
        let prefer = if self.prefer_mutual { " prefer-encrypt=mutual;" } else { "" };
        format!("addr={};{prefer} keydata={}", self.addr, chunks.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_folding() {
        let h =
            AutocryptHeader { addr: "alice@example.org".into(), prefer_mutual: true, keydata: (0..200u8).collect() };
        let v = h.render();
        assert!(v.starts_with("addr=alice@example.org; prefer-encrypt=mutual; keydata="));
        assert_eq!(AutocryptHeader::parse(&v), Some(h.clone()));
        let folded = v.replace(' ', "\r\n ");
        assert_eq!(AutocryptHeader::parse(&folded), Some(h));
    }

    #[test]
    fn rejects_unknown_critical_attributes_and_missing_parts() {
        assert!(AutocryptHeader::parse("addr=a@b.c; keydata=AAAA; unknown=1").is_none());
        assert!(AutocryptHeader::parse("addr=a@b.c; keydata=AAAA; _extra=1").is_some());
        assert!(AutocryptHeader::parse("keydata=AAAA").is_none());
        assert!(AutocryptHeader::parse("addr=a@b.c").is_none());
        assert!(AutocryptHeader::parse("addr=a@b.c; keydata=!!!").is_none());
    }
}
