//! vCard contacts as Delta Chat exchanges them (`EMAIL`, `FN`, `KEY:data:application/pgp-keys;base64,…`): parse and render.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// One contact from a vCard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcardContact {
    pub addr: String,
    pub name: Option<String>,
    /// The binary public key, when the card carries one.
    pub key: Option<Vec<u8>>,
}

/// Every `BEGIN:VCARD … END:VCARD` block with an `EMAIL`.
pub fn parse(text: &str) -> Vec<VcardContact> {
    // Unfold: a line starting with a space or tab continues the previous one.
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let line = raw.trim_end_matches('\r');
        if let Some(cont) = line.strip_prefix([' ', '\t'])
            && let Some(last) = lines.last_mut()
        {
            last.push_str(cont);
            continue;
        }
        lines.push(line.to_owned());
    }
    let mut out = Vec::new();
    #[derive(Default)]
    struct Partial {
        addr: Option<String>,
        name: Option<String>,
        key: Option<Vec<u8>>,
    }
    let mut current: Option<Partial> = None;
    for line in &lines {
        let Some((name_params, value)) = line.split_once(':') else { continue };
        let prop = name_params.split(';').next().unwrap_or("").to_ascii_uppercase();
        // Grouped properties (item1.EMAIL) count like plain ones.
        let prop = prop.rsplit('.').next().unwrap_or("").to_owned();
        match (prop.as_str(), value) {
            ("BEGIN", v) if v.eq_ignore_ascii_case("VCARD") => current = Some(Partial::default()),
            ("END", v) if v.eq_ignore_ascii_case("VCARD") => {
                if let Some(Partial { addr: Some(addr), name, key }) = current.take() {
                    out.push(VcardContact { addr, name, key });
                }
            }
            ("EMAIL", v) => {
                if let Some(c) = current.as_mut() {
                    c.addr.get_or_insert_with(|| v.trim().to_lowercase());
                }
            }
            ("FN", v) => {
                if let Some(c) = current.as_mut() {
                    c.name = Some(unescape(v).trim().to_owned()).filter(|n| !n.is_empty());
                }
            }
            ("KEY", v) => {
                if let Some(c) = current.as_mut() {
                    // Delta Chat escapes the comma of the data URI: `base64\,…`.
                    let data = &v.trim().replace("\\,", ",");
                    let b64 = data.strip_prefix("data:application/pgp-keys;base64,").or_else(|| {
                        // vCard 3: KEY;TYPE=PGP;ENCODING=b:BASE64
                        name_params.to_ascii_uppercase().contains("ENCODING=B").then_some(data)
                    });
                    if let Some(k) = b64.and_then(|b| B64.decode(b.split_whitespace().collect::<String>()).ok()) {
                        c.key = Some(k);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Undoes [`escape`] in one pass (replacing one escape after another read `\\n`, an escaped
/// backslash and an `n`, as a line break).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(',', "\\,").replace(';', "\\;").replace('\n', "\\n")
}

/// A vCard 4.0 for one contact, as Delta Chat writes them.
pub fn render(c: &VcardContact) -> String {
    let mut out = String::from("BEGIN:VCARD\r\nVERSION:4.0\r\n");
    out.push_str(&format!("EMAIL:{}\r\n", c.addr));
    out.push_str(&format!("FN:{}\r\n", escape(c.name.as_deref().unwrap_or(&c.addr))));
    if let Some(k) = &c.key {
        out.push_str(&format!("KEY:data:application/pgp-keys;base64,{}\r\n", B64.encode(k)));
    }
    out.push_str("END:VCARD\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_read_back_in_one_pass() {
        for name in ["C:\\new", "a\\,b", "x;y,z", "two\nlines", "trailing\\"] {
            let c = VcardContact { addr: "a@b.c".into(), name: Some(name.into()), key: None };
            assert_eq!(parse(&render(&c))[0].name.as_deref(), Some(name), "{name:?}");
        }
    }

    #[test]
    fn round_trip_and_folding() {
        let c = VcardContact {
            addr: "alice@example.org".into(),
            name: Some("Alice, A.".into()),
            key: Some(vec![1, 2, 3, 250]),
        };
        let text = render(&c);
        assert_eq!(parse(&text), vec![c.clone()]);
        // Folded at 10 characters, as some writers do.
        let folded: String = text
            .lines()
            .flat_map(|l| {
                let chars: Vec<char> = l.chars().collect();
                chars
                    .chunks(10)
                    .enumerate()
                    .map(|(i, ch)| format!("{}{}\r\n", if i > 0 { " " } else { "" }, ch.iter().collect::<String>()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(parse(&folded), vec![c]);
    }

    #[test]
    fn delta_chat_escapes_the_data_uri_comma() {
        let c = parse(
            "BEGIN:VCARD\r\nVERSION:4.0\r\nEMAIL:alice@example.org\r\nFN:Alice\r\nKEY:data:application/pgp-keys;base64\\,AQID\r\nEND:VCARD\r\n",
        );
        assert_eq!(c[0].key.as_deref(), Some(&[1u8, 2, 3][..]));
    }

    #[test]
    fn cards_without_email_are_skipped() {
        assert!(parse("BEGIN:VCARD\nFN:x\nEND:VCARD\n").is_empty());
        assert_eq!(parse("BEGIN:VCARD\nitem1.EMAIL;TYPE=home:B@X.org\nEND:VCARD").len(), 1);
    }
}
