//! PGP/MIME as Delta Chat core 2.x writes it: real headers inside the encrypted part (RFC 9788 header protection), minimal ones outside. No I/O.
//!
//! The encryption itself is passed in (see [`super::crypto`]), so this module only lays
//! out MIME.

use mail_parser::{MessageParser, MimeHeaders as _, PartType};

use super::message::ChatMessage;
use super::render::{content, message_headers};
use super::text::fold_header;

/// Builds the inner part: every message header, `HP-Outer:` copies of the outer ones,
/// and the content with `protected-headers="v1"; hp="cipher"` on its Content-Type.
pub fn inner_part(msg: &ChatMessage, outer_date: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = |n: &str, v: &str| out.extend_from_slice(fold_header(n, v).as_bytes());
    for (n, v) in outer_headers(msg, outer_date) {
        line("HP-Outer", &format!("{n}: {v}"));
    }
    for (n, v) in message_headers(msg) {
        line(&n, &v);
    }
    let mut part = content(msg);
    for (n, v) in &mut part.headers {
        if n.eq_ignore_ascii_case("Content-Type") {
            v.push_str("; protected-headers=\"v1\"; hp=\"cipher\"");
        }
    }
    let mut body = Vec::new();
    part.write_to(&mut body);
    out.extend_from_slice(&body);
    out
}

/// The headers everybody on the way sees.
fn outer_headers(msg: &ChatMessage, outer_date: i64) -> Vec<(String, String)> {
    let date = chrono::DateTime::from_timestamp(outer_date, 0).unwrap_or_default();
    vec![
        ("From".into(), format!("<{}>", msg.from.addr)),
        ("Date".into(), date.to_rfc2822()),
        ("Message-ID".into(), format!("<{}>", msg.message_id)),
        ("To".into(), "\"hidden-recipients\": ;".into()),
        ("Subject".into(), "[...]".into()),
    ]
}

/// The whole outgoing mail: `armored` is the encrypted inner part.
pub fn outer_mail(msg: &ChatMessage, outer_date: i64, armored: &str) -> Vec<u8> {
    let boundary = format!("=_coi_enc_{}", msg.message_id.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)));
    let mut out = String::new();
    for (n, v) in outer_headers(msg, outer_date) {
        out.push_str(&fold_header(&n, &v));
    }
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n boundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/pgp-encrypted; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nVersion: 1\r\n\r\n"
    ));
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/octet-stream; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    ));
    out.push_str(&armored.replace("\r\n", "\n").replace('\n', "\r\n"));
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.push_str(&format!("\r\n--{boundary}--\r\n"));
    out.into_bytes()
}

/// The armored payload of a PGP/MIME mail (RFC 3156 layout, or the "mixed-up" layouts
/// Exchange and some gateways produce); `None` for anything else.
pub fn encrypted_payload(raw: &[u8]) -> Option<Vec<u8>> {
    let mail = MessageParser::new().with_mime_headers().parse(raw)?;
    let ctype = |i: usize| {
        mail.parts
            .get(i)
            .and_then(|p| p.content_type())
            .map(|c| format!("{}/{}", c.ctype().to_ascii_lowercase(), c.subtype().unwrap_or("").to_ascii_lowercase()))
    };
    let children = |i: usize| match mail.parts.get(i).map(|p| &p.body) {
        Some(PartType::Multipart(ch)) => ch.iter().map(|c| *c as usize).collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let body = |i: usize| mail.parts.get(i).map(|p| p.contents().to_vec());
    let pgp_pair = |kids: &[usize]| -> Option<Vec<u8>> {
        match kids {
            [a, b]
                if ctype(*a).as_deref() == Some("application/pgp-encrypted")
                    && ctype(*b).as_deref() == Some("application/octet-stream") =>
            {
                body(*b)
            }
            _ => None,
        }
    };
    match ctype(0).as_deref() {
        Some("multipart/encrypted") => pgp_pair(&children(0)),
        Some("multipart/mixed") => {
            let kids = children(0);
            match kids.as_slice() {
                [first, rest @ ..] if ctype(*first).as_deref() == Some("text/plain") => match rest {
                    [_, _] => pgp_pair(rest),
                    [inner] if ctype(*inner).as_deref() == Some("multipart/encrypted") => pgp_pair(&children(*inner)),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coi::crypto::{self, Unlock};
    use crate::coi::message::{Group, Mailbox};
    use crate::coi::parse::{Limits, parse};

    #[test]
    fn sealed_mail_hides_headers_and_opens_to_the_same_message() {
        let bridge = crypto::generate("bridge@example.org", None).expect("key");
        let alice = crypto::generate("alice@example.org", None).expect("key");
        let msg = ChatMessage {
            message_id: "m1@localhost".into(),
            is_chat: true,
            from: Mailbox::new("bridge@example.org", Some("Bob (Matrix)")),
            sender: Some(Mailbox::new("bridge@example.org", Some("Bridge"))),
            to: vec![Mailbox::new("alice@example.org", Some("Alice"))],
            date: Some(1_795_000_000),
            subject: Some("Secret group".into()),
            group: Some(Group { id: "abcdefghijklm".into(), name: "Secret group".into(), change: None }),
            text: "inside only".into(),
            ..ChatMessage::default()
        };
        let inner = inner_part(&msg, 1_794_900_000);
        let armored = crypto::encrypt(&inner, &[crypto::public(&alice), crypto::public(&bridge)], &bridge, None)
            .expect("encrypt");
        let mail = outer_mail(&msg, 1_794_900_000, &armored);
        let text = String::from_utf8_lossy(&mail);
        assert!(!text.contains("Secret group") && !text.contains("Bob (Matrix)") && !text.contains("abcdefghijklm"));
        assert!(text.contains("Subject: [...]") && text.contains("multipart/encrypted"));

        let payload = encrypted_payload(&mail).expect("PGP/MIME recognised");
        let d = crypto::decrypt(&payload, Unlock::Key(&alice, None), &[crypto::public(&bridge)]).expect("decrypt");
        assert_eq!(d.signers.len(), 1);
        let back = parse(&d.plain, &Limits::default()).expect("inner parses").message;
        assert_eq!(back, msg);
        // The outer mail alone is not a chat message with content.
        assert!(encrypted_payload(&crate::coi::render(&msg)).is_none());
    }
}
