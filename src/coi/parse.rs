//! Parses one RFC 5322 chat mail into a [`ChatMessage`], tolerant of messy real-world mail.

use mail_parser::{Address, HeaderValue, MessageParser, MessagePart, MimeHeaders, PartType};

use super::autocrypt::AutocryptHeader;
use super::message::{ChatMessage, Group, GroupChange, Kind, Mailbox, Problem};
use super::text::{html_to_text, split_quote, strip_footer, unflow};
use coi_bridge_api::Attachment;

/// Limits that keep hostile mail from costing unbounded memory or time.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The header section of the message, in bytes.
    pub max_header_bytes: usize,
    /// Parts kept per message; more are dropped with [`Problem::TooManyParts`].
    pub max_parts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_header_bytes: 256 * 1024, max_parts: 64 }
    }
}

/// Why a message could not be turned into a chat message at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("header section is {0} bytes, over the limit")]
    HeaderTooLarge(usize),
    #[error("not a MIME message")]
    NotMime,
    #[error("no From address")]
    MissingFrom,
    #[error("From is not an address: {0:?}")]
    BadFrom(String),
}

impl ParseError {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ParseError::HeaderTooLarge(_) => "header_too_large",
            ParseError::NotMime => "not_mime",
            ParseError::MissingFrom => "missing_from",
            ParseError::BadFrom(_) => "bad_from",
        }
    }
}

/// A parsed message and what was wrong with it but tolerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub message: ChatMessage,
    pub problems: Vec<Problem>,
}

/// Length of the header section (up to the first empty line), or the whole input.
fn header_len(raw: &[u8]) -> usize {
    let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = raw.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => raw.len(),
    }
}

/// Parses one message.
pub fn parse(raw: &[u8], limits: &Limits) -> Result<Parsed, ParseError> {
    let hlen = header_len(raw);
    if hlen > limits.max_header_bytes {
        return Err(ParseError::HeaderTooLarge(hlen));
    }
    // With a custom header map only the listed headers are parsed; the rest stay raw.
    let mail = MessageParser::new()
        .with_mime_headers()
        .with_date_headers()
        .with_address_headers()
        .with_message_ids()
        .header_text(mail_parser::HeaderName::Subject)
        .header_text("Chat-Group-Name")
        .header_text("Chat-Group-Name-Changed")
        .header_text("Chat-Group-Description")
        .parse(raw)
        .ok_or(ParseError::NotMime)?;
    if mail.headers().is_empty() {
        return Err(ParseError::NotMime);
    }
    let mut problems = Vec::new();

    let from = first_mailbox(mail.from()).ok_or(ParseError::MissingFrom)?;
    if !is_address(&from.addr) {
        return Err(ParseError::BadFrom(from.addr));
    }

    let message_id = match mail.message_id().map(clean_id).filter(|s| !s.is_empty()) {
        Some(id) => id,
        None => {
            problems.push(Problem::MissingMessageId);
            derived_message_id(raw)
        }
    };

    let header_text = |name: &str| -> Option<String> {
        let v = mail.header(name)?;
        match v {
            HeaderValue::Text(t) => Some(t.trim().to_owned()),
            HeaderValue::TextList(l) => Some(l.join(", ")),
            _ => mail.header_raw(name).map(|s| s.trim().to_owned()),
        }
        .filter(|s| !s.is_empty())
    };

    let mut msg = ChatMessage {
        message_id,
        is_chat: mail.header_raw("Chat-Version").is_some(),
        from,
        sender: first_mailbox(mail.sender()),
        to: mailboxes(mail.to()),
        cc: mailboxes(mail.cc()),
        date: mail.date().map(|d| d.to_timestamp()),
        subject: mail.subject().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
        in_reply_to: ids(mail.in_reply_to()).into_iter().next(),
        references: ids(mail.references()),
        disposition_notification_to: header_text("Chat-Disposition-Notification-To")
            .map(|s| clean_id(&s).to_lowercase()),
        ..ChatMessage::default()
    };

    if let Some(id) = header_text("Chat-Group-ID") {
        if is_group_id(&id) {
            let change = if let Some(a) = header_text("Chat-Group-Member-Added") {
                Some(GroupChange::MemberAdded(clean_id(&a).to_lowercase()))
            } else if let Some(r) = header_text("Chat-Group-Member-Removed") {
                Some(GroupChange::MemberRemoved(clean_id(&r).to_lowercase()))
            } else if let Some(old) = header_text("Chat-Group-Name-Changed") {
                Some(GroupChange::NameChanged { old })
            } else if mail.header_raw("Chat-Group-Description-Changed").is_some() {
                Some(GroupChange::DescriptionChanged {
                    text: header_text("Chat-Group-Description").unwrap_or_default(),
                })
            } else if header_text("Chat-Content").as_deref() == Some("group-avatar-changed") {
                let image = mail.header_raw("Chat-Group-Avatar").and_then(|v| parse_avatar(v.trim()));
                Some(GroupChange::AvatarChanged(image.filter(|d| !d.is_empty())))
            } else {
                None
            };
            msg.group = Some(Group { id, name: header_text("Chat-Group-Name").unwrap_or_default(), change });
        } else {
            problems.push(Problem::BadGroupId(id));
        }
    }

    for (name, value) in mail.headers_raw() {
        let unfolded: String = value.split(['\r', '\n']).map(str::trim).collect::<Vec<_>>().join(" ");
        let unfolded = unfolded.trim();
        if name.eq_ignore_ascii_case("Autocrypt") {
            msg.autocrypt = msg.autocrypt.take().or_else(|| AutocryptHeader::parse(unfolded));
        } else if name.eq_ignore_ascii_case("Autocrypt-Gossip") {
            msg.gossip.extend(AutocryptHeader::parse(unfolded));
        } else if name.eq_ignore_ascii_case("Chat-Group-Member-Fpr") {
            msg.member_fprs = unfolded.split_whitespace().map(str::to_ascii_uppercase).collect();
        } else if name.eq_ignore_ascii_case("Chat-Post-Message-ID") {
            msg.post_message_id = Some(clean_id(unfolded)).filter(|s| !s.is_empty());
        } else if name.eq_ignore_ascii_case("Chat-User-Avatar") {
            msg.user_avatar = parse_avatar(unfolded);
        } else if name.eq_ignore_ascii_case("Chat-Is-Post-Message") {
            msg.is_post_message = unfolded == "1";
        } else if name.eq_ignore_ascii_case("Chat-Group-Past-Members") {
            msg.past_members = unfolded.split_whitespace().map(|a| clean_id(a).to_lowercase()).collect();
        } else if name.eq_ignore_ascii_case("Chat-Group-Member-Timestamps") {
            msg.member_timestamps = unfolded.split_whitespace().filter_map(|t| t.parse().ok()).collect();
        } else if name.eq_ignore_ascii_case("Chat-Group-Member-Added-Fpr")
            || name.eq_ignore_ascii_case("Chat-Group-Member-Removed-Fpr")
        {
            msg.change_fpr = Some(unfolded.to_ascii_uppercase());
        } else if name.get(..11).is_some_and(|p| p.eq_ignore_ascii_case("Secure-Join")) {
            msg.secure_join.push((name.to_owned(), unfolded.to_owned()));
        }
    }

    let mut body = Body::default();
    walk(&mail, 0, &mut body, &mut problems, limits, 0);

    let text = match (body.plain, body.html) {
        (Some(t), _) => t,
        (None, Some(h)) => {
            msg.from_html = true;
            html_to_text(&h)
        }
        (None, None) => String::new(),
    };
    let text = strip_footer(&text.replace("\r\n", "\n")).trim_end().to_owned();
    msg.attachments = body.attachments;

    if let Some(report) = body.mdn {
        let original = report_field(&report, "Original-Message-ID").map(|s| clean_id(&s));
        if let Some(original) = original.filter(|s| !s.is_empty()) {
            let additional = report_field(&report, "Additional-Message-IDs")
                .map(|s| s.split_whitespace().map(clean_id).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            msg.kind = Kind::ReadReceipt { original, additional };
            msg.text = text.trim().to_owned();
            return Ok(Parsed { message: msg, problems });
        }
        msg.kind = Kind::Report;
        msg.text = text.trim().to_owned();
        return Ok(Parsed { message: msg, problems });
    }

    if let Some(emoji) = body.reaction {
        msg.kind = Kind::Reaction { emoji: emoji.trim().to_owned() };
        return Ok(Parsed { message: msg, problems });
    }

    if let Some(target) = header_text("Chat-Edit").map(|s| clean_id(&s)) {
        msg.kind = Kind::Edit { target };
        let (_, rest) = split_quote(&text);
        msg.text = rest.replace(ZWSP, "").trim_start_matches("✏️").trim().to_owned();
        return Ok(Parsed { message: msg, problems });
    }
    if let Some(targets) = mail.header_raw("Chat-Delete") {
        let targets: Vec<String> = targets.split_whitespace().map(clean_id).filter(|s| !s.is_empty()).collect();
        if !targets.is_empty() {
            msg.kind = Kind::Delete { targets };
            msg.text = text.trim().to_owned();
            return Ok(Parsed { message: msg, problems });
        }
    }

    let (quote, rest) = split_quote(&text);
    msg.quote = quote.map(|q| q.replace(ZWSP, ""));
    msg.text = rest.replace(ZWSP, "");
    threading_is_not_a_reply(&mut msg);
    Ok(Parsed { message: msg, problems })
}

/// The zero-width space: Delta Chat escapes a line start with it (a `>` that is no quote,
/// a `--` that is no footer) and drops every one from the text it shows; so do we.
pub const ZWSP: char = '\u{200B}';

/// Delta Chat's reply rule (core's `Message::quoted_message`): a message answers its
/// `In-Reply-To` only when it carries a quote. Delta Chat names the chat's last message in
/// `In-Reply-To` on every message, for classic mail clients' threading; without a quote
/// that parent only threads, so it moves to the end of `references` (nearest last), where
/// chat assignment still finds it, and the message answers nothing.
fn threading_is_not_a_reply(msg: &mut ChatMessage) {
    if msg.quote.is_some() {
        return;
    }
    if let Some(parent) = msg.in_reply_to.take()
        && !msg.references.contains(&parent)
    {
        msg.references.push(parent);
    }
}

#[derive(Default)]
struct Body {
    plain: Option<String>,
    html: Option<String>,
    reaction: Option<String>,
    mdn: Option<String>,
    attachments: Vec<Attachment>,
    parts_seen: usize,
}

/// Walks the MIME tree depth-first, collecting the first text, HTML, reaction, MDN report
/// and every attachment.
fn walk(
    mail: &mail_parser::Message<'_>,
    idx: usize,
    body: &mut Body,
    problems: &mut Vec<Problem>,
    limits: &Limits,
    depth: usize,
) {
    let Some(part) = mail.parts.get(idx) else {
        return;
    };
    body.parts_seen += 1;
    if body.parts_seen > limits.max_parts || depth > 16 {
        if !problems.contains(&Problem::TooManyParts) {
            problems.push(Problem::TooManyParts);
        }
        return;
    }
    let ctype = part
        .content_type()
        .map(|c| (c.ctype().to_ascii_lowercase(), c.subtype().unwrap_or("").to_ascii_lowercase()))
        .unwrap_or_else(|| ("text".into(), "plain".into()));
    let disposition = part.content_disposition().map(|d| d.ctype().to_ascii_lowercase());
    let is_attachment = disposition.as_deref() == Some("attachment");
    if part.is_encoding_problem {
        problems.push(Problem::BadEncoding { part: format!("{}/{}", ctype.0, ctype.1) });
    }

    match &part.body {
        PartType::Multipart(children) => {
            for child in children {
                walk(mail, *child as usize, body, problems, limits, depth + 1);
            }
        }
        _ if ctype.0 == "message" && ctype.1 == "disposition-notification" => {
            body.mdn = Some(String::from_utf8_lossy(raw_body(mail, part)).into_owned());
        }
        PartType::Text(t) if disposition.as_deref() == Some("reaction") => {
            body.reaction.get_or_insert_with(|| t.to_string());
        }
        PartType::Text(t) if !is_attachment && ctype.1 == "plain" && body.plain.is_none() => {
            let flowed = part
                .content_type()
                .and_then(|c| c.attribute("format"))
                .is_some_and(|f| f.eq_ignore_ascii_case("flowed"));
            let delsp =
                part.content_type().and_then(|c| c.attribute("delsp")).is_some_and(|f| f.eq_ignore_ascii_case("yes"));
            body.plain = Some(if flowed { unflow(t, delsp) } else { t.to_string() });
        }
        PartType::Html(h) if !is_attachment && body.html.is_none() => {
            body.html = Some(h.to_string());
        }
        _ => {
            let data = part.contents().to_vec();
            let mut mime = format!("{}/{}", ctype.0, ctype.1);
            let name = part
                .attachment_name()
                .map(sanitize_filename)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| default_name(&mime, body.attachments.len()));
            // Delta Chat sends every file as application/octet-stream and lets the name
            // say what it is.
            if mime == "application/octet-stream"
                && let Some(guessed) = mime_from_name(&name)
            {
                mime = guessed.to_owned();
            }
            body.attachments.push(Attachment { name, mime, data });
        }
    }
}

fn raw_body<'a>(mail: &'a mail_parser::Message<'_>, part: &MessagePart<'_>) -> &'a [u8] {
    let raw = mail.raw_message();
    let start = (part.offset_body as usize).min(raw.len());
    let end = (part.offset_end as usize).clamp(start, raw.len());
    &raw[start..end]
}

/// One field of a `message/disposition-notification` body.
fn report_field(report: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in report.lines() {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_owned());
        }
    }
    value
}

fn first_mailbox(a: Option<&Address<'_>>) -> Option<Mailbox> {
    mailboxes(a).into_iter().next()
}

fn mailboxes(a: Option<&Address<'_>>) -> Vec<Mailbox> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .filter_map(|addr| {
            let email = addr.address.as_deref()?.trim();
            if email.is_empty() {
                return None;
            }
            Some(Mailbox::new(email, addr.name.as_deref()))
        })
        .collect()
}

fn ids(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => t.split_whitespace().map(clean_id).filter(|s| !s.is_empty()).collect(),
        HeaderValue::TextList(l) => l.iter().map(|s| clean_id(s)).filter(|s| !s.is_empty()).collect(),
        _ => Vec::new(),
    }
}

/// Strips angle brackets and white space from a Message-ID or address.
pub fn clean_id(s: &str) -> String {
    s.trim().trim_start_matches('<').trim_end_matches('>').trim().to_owned()
}

fn is_address(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        }
        None => false,
    }
}

/// A valid `Chat-Group-ID`: 11 to 32 base64url characters.
pub fn is_group_id(s: &str) -> bool {
    (11..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A stable id for mail without Message-ID, so that seeing it twice is still one message.
fn derived_message_id(raw: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(raw);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{hex}@derived.coi-bridge.invalid")
}

fn sanitize_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    base.chars().filter(|c| !c.is_control()).take(200).collect::<String>().trim().to_owned()
}

/// The MIME type a file name's extension suggests, for the common chat media.
pub fn mime_from_name(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "ogg" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "vcf" => "text/vcard",
        "xdc" => "application/vnd.webxdc+zip",
        "zip" => "application/zip",
        _ => return None,
    })
}

fn default_name(mime: &str, n: usize) -> String {
    let ext = match mime {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "audio/ogg" => "ogg",
        "video/mp4" => "mp4",
        "text/plain" => "txt",
        "text/html" => "html",
        "text/vcard" => "vcf",
        _ => "bin",
    };
    format!("attachment-{}.{ext}", n + 1)
}

/// Avatars larger than this (decoded) are ignored; Delta Chat sends about 20 KB.
const MAX_AVATAR: usize = 512 * 1024;

/// `Chat-User-Avatar: base64:<image>` (or `0`, removed). Other forms (an attachment
/// named by the header, as old clients did) are not taken.
fn parse_avatar(value: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    if value == "0" {
        return Some(Vec::new());
    }
    let data: String = value.strip_prefix("base64:")?.chars().filter(|c| !c.is_whitespace()).collect();
    if data.len() > MAX_AVATAR * 4 / 3 + 4 {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(data).ok().filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn avatars_are_read_from_base64_or_removed() {
        assert_eq!(super::parse_avatar("base64:aGVs bG8="), Some(b"hello".to_vec()), "folded base64");
        assert_eq!(super::parse_avatar("0"), Some(Vec::new()), "removed");
        assert_eq!(super::parse_avatar("avatar.jpg"), None, "the old attachment form is not taken");
        assert_eq!(super::parse_avatar("base64:!!!"), None);
        assert_eq!(super::parse_avatar(&format!("base64:{}", "A".repeat(2_000_000))), None, "too large");
    }
    use super::*;

    #[test]
    fn hostile_inputs_are_errors_not_panics() {
        let limits = Limits::default();
        assert_eq!(parse(b"", &limits).unwrap_err(), ParseError::NotMime);
        assert!(parse(&[0xff, 0x00, 0x13, 0x37, 0x80], &limits).is_err());
        let big = format!("X-Big: {}\r\nFrom: a@b.c\r\n\r\nhi", "a".repeat(300 * 1024));
        assert!(matches!(parse(big.as_bytes(), &limits), Err(ParseError::HeaderTooLarge(_))));
        assert_eq!(parse(b"Subject: x\r\n\r\nbody", &limits).unwrap_err(), ParseError::MissingFrom);
    }

    /// Found by the parse fuzzer: a `message/*` part nested in another right before the
    /// closing boundary reaches a `debug_assert!` in mail-parser 0.11.9 (debug builds
    /// only; Cargo.toml turns its debug assertions off so tests behave like release).
    #[test]
    fn nested_message_parts_do_not_panic() {
        let raw = b"Content-Type:multipart;boundary=b\n\n--bContent-Type:message/global\n\nContent-Type:message/global\n\n\n--b--";
        assert_eq!(parse(raw, &Limits::default()).unwrap_err(), ParseError::MissingFrom);
        let mut with_from = b"From: a@b.c\n".to_vec();
        with_from.extend_from_slice(raw);
        assert!(parse(&with_from, &Limits::default()).is_ok());
    }

    /// A header name with a multi-byte character across byte 11 used to panic the
    /// `Secure-Join` prefix check.
    #[test]
    fn non_ascii_header_names_are_not_sliced_mid_character() {
        let raw = "From: a@b.c\r\nSecure-Joi\u{e4}: x\r\nSecure-Join: vc-request\r\n\r\nhi".as_bytes();
        let parsed = parse(raw, &Limits::default()).expect("parses");
        assert_eq!(parsed.message.secure_join, vec![("Secure-Join".to_owned(), "vc-request".to_owned())]);
    }

    /// Delta Chat names the chat's last message in In-Reply-To on every message; only a
    /// quote makes it a reply. A reaction's In-Reply-To is its target, quote or not.
    #[test]
    fn in_reply_to_without_a_quote_only_threads() {
        let mail = |irt: &str, body: &str| {
            format!(
                "From: <alice@example.org>\r\nMessage-ID: <m@x>\r\nIn-Reply-To: <{irt}>\r\nReferences: <root@x>\r\n\
                 Chat-Version: 1.0\r\n\r\n{body}"
            )
        };
        let follow = parse(mail("last@x", "hello").as_bytes(), &Limits::default()).expect("parses").message;
        assert_eq!((follow.in_reply_to.as_deref(), follow.target()), (None, None));
        assert_eq!(follow.references, vec!["root@x".to_string(), "last@x".to_string()], "still threads");

        let reply = parse(mail("q@x", "> quoted\r\n\r\nhello").as_bytes(), &Limits::default()).expect("parses");
        assert_eq!(reply.message.target(), Some("q@x"));
        assert_eq!(reply.message.quote.as_deref(), Some("quoted"));

        let escaped = parse(mail("last@x", "\u{200B}> not a quote").as_bytes(), &Limits::default()).expect("parses");
        assert_eq!((escaped.message.text.as_str(), escaped.message.target()), ("> not a quote", None));

        let reaction = "From: <alice@example.org>\r\nMessage-ID: <r@x>\r\nIn-Reply-To: <t@x>\r\n\
                        Content-Type: text/plain\r\nContent-Disposition: reaction\r\n\r\n\u{1F44D}";
        let reaction = parse(reaction.as_bytes(), &Limits::default()).expect("parses").message;
        assert_eq!(reaction.target(), Some("t@x"));
    }

    #[test]
    fn group_ids_are_validated() {
        assert!(is_group_id("abcdefghijk"));
        assert!(is_group_id("Ab-_0123456789Ab-_0123456789Ab-_"));
        assert!(!is_group_id("short"));
        assert!(!is_group_id("has space inside!"));
    }

    #[test]
    fn report_fields_unfold() {
        let r = "Original-Message-ID: <a@b>\r\nAdditional-Message-IDs: <c@d>\r\n <e@f>\r\nDisposition: x";
        assert_eq!(report_field(r, "original-message-id").as_deref(), Some("<a@b>"));
        assert_eq!(report_field(r, "Additional-Message-IDs").as_deref(), Some("<c@d> <e@f>"));
    }

    #[test]
    fn filenames_lose_paths() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\x\\y.txt"), "y.txt");
    }
}
