//! Renders a [`ChatMessage`] to MIME: message headers and a content tree, kept apart so the encryption layer can wrap the content.

use super::message::{ChatMessage, GroupChange, Kind, Mailbox};
use super::parse::ZWSP;
use super::text::{base64_lines, crlf, encode_display_name, encode_words, filename_param, fold_header};

/// One MIME part: its own headers and a body that is already transfer-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// `(name, value)`, values already RFC 2047-encoded where needed.
    pub headers: Vec<(String, String)>,
    pub body: PartBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartBody {
    /// Encoded bytes with CRLF line ends.
    Leaf(Vec<u8>),
    Multipart {
        boundary: String,
        parts: Vec<Part>,
    },
}

impl Part {
    fn leaf(headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        Self { headers, body: PartBody::Leaf(body) }
    }

    /// Writes headers, blank line and body.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.headers {
            out.extend_from_slice(fold_header(name, value).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        match &self.body {
            PartBody::Leaf(bytes) => out.extend_from_slice(bytes),
            PartBody::Multipart { boundary, parts } => {
                for p in parts {
                    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                    p.write_to(out);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

/// The whole message, ready for SMTP `DATA`.
pub fn render(msg: &ChatMessage) -> Vec<u8> {
    let mut part = content(msg);
    let mut headers = message_headers(msg);
    headers.push(("MIME-Version".into(), "1.0".into()));
    headers.append(&mut part.headers);
    part.headers = headers;
    part.to_bytes()
}

fn mailbox(m: &Mailbox) -> String {
    match &m.name {
        Some(name) => format!("{} <{}>", encode_display_name(name), m.addr),
        None => format!("<{}>", m.addr),
    }
}

fn mailbox_list(list: &[Mailbox]) -> String {
    list.iter().map(mailbox).collect::<Vec<_>>().join(", ")
}

/// The message headers (everything but the content headers). With encryption these are
/// the protected headers of the inner part.
pub fn message_headers(msg: &ChatMessage) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = Vec::new();
    let mut add = |n: &str, v: String| h.push((n.to_owned(), v));
    add("From", mailbox(&msg.from));
    if let Some(sender) = &msg.sender {
        add("Sender", mailbox(sender));
    }
    if msg.to.is_empty() {
        add("To", "\"hidden-recipients\": ;".into());
    } else {
        add("To", mailbox_list(&msg.to));
    }
    if !msg.cc.is_empty() {
        add("Cc", mailbox_list(&msg.cc));
    }
    let date = chrono::DateTime::from_timestamp(msg.date.unwrap_or(0), 0).unwrap_or_default();
    add("Date", date.to_rfc2822());
    add("Message-ID", format!("<{}>", msg.message_id));
    if let Some(irt) = &msg.in_reply_to {
        add("In-Reply-To", format!("<{irt}>"));
    }
    if !msg.references.is_empty() {
        add("References", msg.references.iter().map(|r| format!("<{r}>")).collect::<Vec<_>>().join(" "));
    }
    let subject = msg.subject.clone().unwrap_or_else(|| format!("Message from {}", msg.from.display()));
    add("Subject", encode_words(&subject));
    if msg.is_chat {
        add("Chat-Version", "1.0".into());
    }
    if let Some(g) = &msg.group {
        add("Chat-Group-ID", g.id.clone());
        add("Chat-Group-Name", encode_words(&g.name));
        match &g.change {
            Some(GroupChange::MemberAdded(a)) => {
                add("Chat-Group-Member-Added", a.clone());
                if let Some(f) = &msg.change_fpr {
                    add("Chat-Group-Member-Added-Fpr", f.clone());
                }
            }
            Some(GroupChange::MemberRemoved(a)) => {
                add("Chat-Group-Member-Removed", a.clone());
                if let Some(f) = &msg.change_fpr {
                    add("Chat-Group-Member-Removed-Fpr", f.clone());
                }
            }
            Some(GroupChange::NameChanged { old }) => add("Chat-Group-Name-Changed", encode_words(old)),
            Some(GroupChange::DescriptionChanged { text }) => {
                add("Chat-Group-Description", encode_words(text));
                add("Chat-Group-Description-Changed", String::new());
                add("Chat-Group-Description-Timestamp", msg.date.unwrap_or_default().to_string());
            }
            Some(GroupChange::AvatarChanged(image)) => {
                add("Chat-Content", "group-avatar-changed".into());
                add(
                    "Chat-Group-Avatar",
                    match image {
                        // Spaces let the header fold; readers drop them from the base64.
                        Some(data) => {
                            let lines = String::from_utf8_lossy(&base64_lines(data)).replace("\r\n", " ");
                            format!("base64:{}", lines.trim_end())
                        }
                        None => "0".into(),
                    },
                );
            }
            None => {}
        }
    }
    if let Some(to) = &msg.disposition_notification_to {
        add("Chat-Disposition-Notification-To", to.clone());
    }
    if !msg.member_fprs.is_empty() {
        add("Chat-Group-Member-Fpr", msg.member_fprs.join(" "));
    }
    if !msg.past_members.is_empty() {
        add("Chat-Group-Past-Members", msg.past_members.join(" "));
    }
    if !msg.member_timestamps.is_empty() {
        let ts: Vec<String> = msg.member_timestamps.iter().map(i64::to_string).collect();
        add("Chat-Group-Member-Timestamps", ts.join(" "));
    }
    for (name, value) in &msg.secure_join {
        add(name, value.clone());
    }
    if let Some(ac) = &msg.autocrypt {
        add("Autocrypt", ac.render());
    }
    for g in &msg.gossip {
        add("Autocrypt-Gossip", g.render());
    }
    match &msg.kind {
        Kind::Edit { target } => add("Chat-Edit", format!("<{target}>")),
        Kind::Delete { targets } => {
            add("Chat-Delete", targets.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>().join(" "));
        }
        Kind::ReadReceipt { .. } => add("Auto-Submitted", "auto-replied".into()),
        Kind::Text | Kind::Reaction { .. } | Kind::Report => {}
    }
    h
}

/// A boundary that cannot occur in base64 or 7bit text we produce.
fn boundary(msg: &ChatMessage, n: u32) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in msg.message_id.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("=_coi{n}_{hash:016x}")
}

fn text_part(text: &str, disposition: Option<&str>) -> Part {
    let text = crlf(text);
    let simple = text.is_ascii() && text.split("\r\n").all(|l| l.len() <= 998 && !l.starts_with("--"));
    let mut headers = vec![("Content-Type".into(), "text/plain; charset=utf-8".into())];
    let body = if simple {
        headers.push(("Content-Transfer-Encoding".into(), "7bit".into()));
        let mut b = text.into_bytes();
        b.extend_from_slice(b"\r\n");
        b
    } else {
        headers.push(("Content-Transfer-Encoding".into(), "base64".into()));
        base64_lines(text.as_bytes())
    };
    if let Some(d) = disposition {
        headers.push(("Content-Disposition".into(), d.into()));
    }
    Part::leaf(headers, body)
}

/// The text part's body: the quote as `> ` lines and a blank line, then the text. That
/// quote, with `In-Reply-To` naming the quoted message, is what Delta Chat shows as a reply.
/// A text that merely starts with `>` (a `>_<`, a quote typed by hand) and answers
/// nothing gets a zero-width space first, as Delta Chat escapes its own: otherwise Delta Chat
/// would show it as a quote.
fn body_text(msg: &ChatMessage) -> String {
    let mut out = String::new();
    match &msg.quote {
        Some(q) => {
            for line in q.split('\n') {
                out.push_str("> ");
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
        }
        None if msg.text.starts_with('>') => out.push(ZWSP),
        None => {}
    }
    out.push_str(&msg.text);
    out
}

/// The content: a single part or a multipart tree, with its content headers.
pub fn content(msg: &ChatMessage) -> Part {
    match &msg.kind {
        Kind::Reaction { emoji } => text_part(emoji, Some("reaction")),
        Kind::ReadReceipt { original, additional } => {
            let mut report = format!(
                "Reporting-UA: coi-bridge\r\nOriginal-Recipient: rfc822;{me}\r\nFinal-Recipient: rfc822;{me}\r\n\
                 Original-Message-ID: <{original}>\r\nDisposition: manual-action/MDN-sent-automatically; displayed\r\n",
                me = msg.from.addr
            );
            if !additional.is_empty() {
                let ids: Vec<String> = additional.iter().map(|a| format!("<{a}>")).collect();
                report.push_str(&format!("Additional-Message-IDs: {}\r\n", ids.join(" ")));
            }
            let notice = text_part("This is a receipt notification.", None);
            let report = Part::leaf(
                vec![("Content-Type".into(), "message/disposition-notification".into())],
                report.into_bytes(),
            );
            let b = boundary(msg, 0);
            Part {
                headers: vec![(
                    "Content-Type".into(),
                    format!("multipart/report; report-type=disposition-notification; boundary=\"{b}\""),
                )],
                body: PartBody::Multipart { boundary: b, parts: vec![notice, report] },
            }
        }
        Kind::Delete { .. } if msg.text.is_empty() => text_part("🚮", None),
        Kind::Report => text_part(&msg.text, None),
        Kind::Text | Kind::Edit { .. } | Kind::Delete { .. } => {
            let text = text_part(&body_text(msg), None);
            if msg.attachments.is_empty() {
                return text;
            }
            let mut parts = vec![text];
            for a in &msg.attachments {
                let mime = if a.mime.contains('/') && a.mime.is_ascii() {
                    a.mime.as_str()
                } else {
                    "application/octet-stream"
                };
                parts.push(Part::leaf(
                    vec![
                        ("Content-Type".into(), format!("{mime}; {}", filename_param("name", &a.name))),
                        ("Content-Disposition".into(), format!("attachment; {}", filename_param("filename", &a.name))),
                        ("Content-Transfer-Encoding".into(), "base64".into()),
                    ],
                    base64_lines(&a.data),
                ));
            }
            let b = boundary(msg, 0);
            Part {
                headers: vec![("Content-Type".into(), format!("multipart/mixed; boundary=\"{b}\""))],
                body: PartBody::Multipart { boundary: b, parts },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coi::autocrypt::AutocryptHeader;
    use crate::coi::message::Group;
    use crate::coi::parse::{Limits, parse};
    use coi_bridge_api::Attachment;

    fn base() -> ChatMessage {
        ChatMessage {
            message_id: "6f0c2a0e-1b1d-4c4e-9b7e-7a1f1b0e2c3d@localhost".into(),
            is_chat: true,
            from: Mailbox::new("bridge@example.org", Some("Bob (Matrix)")),
            sender: Some(Mailbox::new("bridge@example.org", Some("COI Bridge"))),
            to: vec![Mailbox::new("alice@example.org", Some("Alice Ünicode"))],
            date: Some(1_790_000_000),
            subject: Some("Grüße".into()),
            text: "Hello 👋\nsecond line".into(),
            ..ChatMessage::default()
        }
    }

    fn round_trip(msg: &ChatMessage) -> ChatMessage {
        let bytes = render(msg);
        let parsed = parse(&bytes, &Limits::default()).expect("own output parses");
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        parsed.message
    }

    #[test]
    fn every_kind_round_trips() {
        let mut group = base();
        group.group = Some(Group {
            id: "AbCdEfGhIjK_-12".into(),
            name: "Team 🚀".into(),
            change: Some(GroupChange::MemberAdded("carol@example.org".into())),
        });
        group.in_reply_to = Some("parent@localhost".into());
        group.references = vec!["root@localhost".into(), "parent@localhost".into()];
        group.quote = Some("earlier\ntext".into());
        group.disposition_notification_to = Some("bridge@example.org".into());
        group.autocrypt = Some(AutocryptHeader {
            addr: "bridge@example.org".into(),
            prefer_mutual: true,
            keydata: (0..=255).collect(),
        });
        group.gossip = vec![
            AutocryptHeader { addr: "alice@example.org".into(), prefer_mutual: false, keydata: vec![1; 300] },
            AutocryptHeader { addr: "carol@example.org".into(), prefer_mutual: false, keydata: vec![2; 300] },
        ];
        group.member_fprs = vec!["A".repeat(40), "B".repeat(40)];
        group.member_timestamps = vec![1_795_000_000, 1_795_000_001, 1_795_000_002];
        group.past_members = vec!["dave@example.org".into()];
        group.change_fpr = Some("C".repeat(40));
        group.secure_join = vec![("Secure-Join".into(), "vg-member-added".into())];
        group.attachments = vec![
            Attachment {
                name: "pic ä.png".into(),
                mime: "image/png".into(),
                data: vec![0x89, b'P', b'N', b'G', 0, 1, 2],
            },
            Attachment { name: "notes.txt".into(), mime: "text/plain".into(), data: b"line\r\n".to_vec() },
        ];
        let mut reaction = base();
        reaction.kind = Kind::Reaction { emoji: "👍".into() };
        reaction.in_reply_to = Some("target@localhost".into());
        reaction.text = String::new();
        let mut edit = base();
        edit.kind = Kind::Edit { target: "target@localhost".into() };
        let mut delete = base();
        delete.kind = Kind::Delete { targets: vec!["a@localhost".into(), "b@localhost".into()] };
        delete.text = "🚮".into();
        let mut receipt = base();
        receipt.kind = Kind::ReadReceipt { original: "o@localhost".into(), additional: vec!["p@localhost".into()] };
        receipt.text = "This is a receipt notification.".into();

        let described = |change: GroupChange| {
            let mut m = base();
            m.group = Some(Group { id: "Xk3_mQ9-pL2vR8tY".into(), name: "Team".into(), change: Some(change) });
            m
        };
        let description =
            described(GroupChange::DescriptionChanged { text: "Weekly walks, Sundays at 10 ☀️".into() });
        let avatar = described(GroupChange::AvatarChanged(Some((0..=255u8).cycle().take(3000).collect())));
        let no_avatar = described(GroupChange::AvatarChanged(None));

        for msg in [base(), group, reaction, edit, delete, receipt, description, avatar, no_avatar] {
            assert_eq!(round_trip(&msg), msg);
        }
    }

    /// Delta Chat shows a reply only for a quote; a text that merely starts with `>` must
    /// not look like one (it gets Delta Chat's own zero-width-space escape).
    #[test]
    fn only_a_quote_makes_a_reply() {
        let mut reply = base();
        reply.text = "tulips".into();
        reply.in_reply_to = Some("parent@localhost".into());
        reply.references = vec!["parent@localhost".into()];
        reply.quote = Some("what shall we plant?\nany ideas".into());
        let bytes = String::from_utf8(render(&reply)).expect("ascii");
        assert!(bytes.contains("In-Reply-To: <parent@localhost>\r\n"), "{bytes}");
        assert!(bytes.ends_with("\r\n\r\n> what shall we plant?\r\n> any ideas\r\n\r\ntulips\r\n"), "{bytes}");
        assert_eq!(round_trip(&reply), reply);

        let mut sigh = base();
        sigh.text = ">_< I forgot the seeds".into();
        let PartBody::Leaf(body) = content(&sigh).body else { panic!("one part") };
        use base64::Engine as _;
        let compact: Vec<u8> = body.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
        let decoded = base64::engine::general_purpose::STANDARD.decode(compact).expect("base64");
        assert_eq!(String::from_utf8(decoded).expect("utf-8"), "\u{200B}>_< I forgot the seeds");
        let back = round_trip(&sigh);
        assert_eq!(
            (back.quote, back.text.as_str()),
            (None, ">_< I forgot the seeds"),
            "the escape is dropped on reading"
        );
    }

    #[test]
    fn lines_starting_with_dashes_do_not_break_multipart() {
        let mut msg = base();
        msg.text = "--=_coi0_x\n-- \nnot a footer".into();
        msg.attachments = vec![Attachment { name: "a".into(), mime: "application/octet-stream".into(), data: vec![1] }];
        let back = round_trip(&msg);
        assert_eq!(back.attachments, msg.attachments);
        assert!(back.text.starts_with("--=_coi0_x"));
    }
}
