//! Text helpers of the codec: format=flowed, quotes, footers, HTML to text, and header encoding.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Joins RFC 3676 format=flowed lines: a line ending in a space continues on the next.
pub fn unflow(text: &str, delsp: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(raw) = lines.next() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        // Space-stuffing: a leading space was added by the sender.
        let line = line.strip_prefix(' ').unwrap_or(line);
        let flowed = line.ends_with(' ') && line != "-- ";
        if flowed {
            out.push_str(if delsp { &line[..line.len() - 1] } else { line });
        } else {
            out.push_str(line);
            if lines.peek().is_some() {
                out.push('\n');
            }
        }
    }
    out
}

/// Splits a Delta-Chat-style quote off the top: `> ` lines, then the reply text.
/// Returns (quote without markers, rest).
pub fn split_quote(text: &str) -> (Option<String>, String) {
    let mut quote = Vec::new();
    let mut rest_start = None;
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim_end_matches('\r');
        if let Some(q) = line.strip_prefix('>') {
            quote.push(q.strip_prefix(' ').unwrap_or(q));
        } else {
            rest_start = Some(i);
            break;
        }
    }
    if quote.is_empty() {
        return (None, text.to_owned());
    }
    let rest = match rest_start {
        // A quote is only a quote when a blank line or the end follows it.
        Some(i) if !lines[i].trim().is_empty() => return (None, text.to_owned()),
        Some(i) => lines[i + 1..].join("\n"),
        None => String::new(),
    };
    (Some(quote.join("\n")), rest)
}

/// Removes a trailing `-- ` signature block (Delta Chat puts the status there).
pub fn strip_footer(text: &str) -> &str {
    if let Some(pos) = text.rfind("\n-- \n") {
        return &text[..pos];
    }
    if let Some(stripped) = text.strip_suffix("\n-- ") {
        return stripped;
    }
    if text.starts_with("-- \n") {
        return "";
    }
    text
}

/// HTML read per body; the rest is cut off and marked with [`TRUNCATED`]. A chat message
/// is never this long, and every step below is linear, so this only bounds the output.
pub const MAX_HTML_BYTES: usize = 1024 * 1024;

/// Appended where HTML over [`MAX_HTML_BYTES`] was cut off.
pub const TRUNCATED: &str = "\n[…]";

/// Entities are at most this long (`&#x10FFFF;` is 10 bytes with the `&`, not the `;`).
const MAX_ENTITY: usize = 10;

#[cfg(test)]
thread_local! {
    /// Bytes the HTML scanner looked at, so tests can show the work is linear.
    static SCANNED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts `n` scanned bytes (tests only).
#[inline]
fn scanned(n: usize) {
    #[cfg(test)]
    SCANNED.with(|c| c.set(c.get() + n as u64));
    #[cfg(not(test))]
    let _ = n;
}

/// Position of the ASCII byte `b` in `hay`; every search of the HTML scanner goes through here.
fn find_ascii(hay: &str, b: u8) -> Option<usize> {
    let found = hay.as_bytes().iter().position(|&x| x == b);
    scanned(found.map_or(hay.len(), |i| i + 1));
    found
}

/// Where `</name` starts in `hay`, case-insensitively, without copying `hay`.
fn find_close_tag(hay: &str, name: &str) -> Option<usize> {
    let bytes = hay.as_bytes();
    let mut from = 0;
    while let Some(i) = find_ascii(&hay[from..], b'<') {
        let at = from + i;
        let candidate = bytes.get(at + 1..at + 2 + name.len());
        scanned(name.len() + 1);
        if candidate.is_some_and(|c| c[0] == b'/' && c[1..].eq_ignore_ascii_case(name.as_bytes())) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// A plain-text rendering of an HTML body: tags dropped, block ends as line breaks,
/// the common entities decoded. Scripts and styles are dropped with their content.
/// Linear in the input; input over [`MAX_HTML_BYTES`] is cut off and marked.
pub fn html_to_text(html: &str) -> String {
    let truncated = html.len() > MAX_HTML_BYTES;
    let html = &html[..html.floor_char_boundary(MAX_HTML_BYTES)];
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(lt) = find_ascii(rest, b'<') {
        decode_entities_into(&rest[..lt], &mut out);
        let after = &rest[lt + 1..];
        let Some(gt) = find_ascii(after, b'>') else {
            rest = "";
            break;
        };
        let tag = after[..gt].trim();
        let closing = tag.starts_with('/');
        let unslashed = tag.trim_start_matches('/');
        let name_len = unslashed.bytes().take_while(u8::is_ascii_alphanumeric).count();
        let name = &unslashed[..name_len];
        scanned(gt);
        rest = &after[gt + 1..];
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if !closing && (is("script") || is("style")) {
            rest = match find_close_tag(rest, name) {
                Some(end) => find_ascii(&rest[end..], b'>').map_or("", |g| &rest[end + g + 1..]),
                None => "",
            };
            continue;
        }
        if ["br", "p", "div", "li", "tr", "h1", "h2", "h3", "blockquote"].iter().any(|n| is(n)) && !out.ends_with('\n')
        {
            out.push('\n');
        }
    }
    decode_entities_into(rest, &mut out);
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    let mut text = lines.join("\n").trim().to_owned();
    if truncated {
        text.push_str(TRUNCATED);
    }
    text
}

/// Appends `s` with the common character references decoded; others stay as written.
fn decode_entities_into(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(amp) = find_ascii(rest, b'&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        // The `;` must come within MAX_ENTITY bytes: never search further than that.
        let window = &after.as_bytes()[..after.len().min(MAX_ENTITY + 1)];
        scanned(window.len());
        let end = window.iter().position(|&b| b == b';');
        let decoded = end.and_then(|e| {
            let ent = &after[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => ent
                    .strip_prefix("#x")
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &after[e + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
}

/// True when `s` can go into a header as it is.
fn is_plain_header_text(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b)) && !s.contains("=?")
}

/// RFC 2047 encoded words for a header value (unstructured text), split so each word
/// stays within 75 characters. Plain ASCII is returned as it is.
pub fn encode_words(s: &str) -> String {
    if is_plain_header_text(s) {
        return s.to_owned();
    }
    // 75 - len("=?utf-8?b??=") = 63 base64 chars = 47 bytes of input at most.
    const MAX_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in s.chars() {
        if chunk.len() + c.len_utf8() > MAX_BYTES {
            words.push(format!("=?utf-8?b?{}?=", B64.encode(&chunk)));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?utf-8?b?{}?=", B64.encode(&chunk)));
    }
    words.join(" ")
}

/// A display name for an address header: plain names quoted, others encoded.
pub fn encode_display_name(name: &str) -> String {
    if is_plain_header_text(name) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    } else {
        encode_words(name)
    }
}

/// `filename` parameter, RFC 2231-encoded when it is not plain ASCII.
pub fn filename_param(key: &str, name: &str) -> String {
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    if is_plain_header_text(&clean) {
        let escaped = clean.replace('\\', "\\\\").replace('"', "\\\"");
        return format!("{key}=\"{escaped}\"");
    }
    let mut enc = String::new();
    for b in clean.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{key}*=utf-8''{enc}")
}

/// Folds a header line at spaces so that lines stay within 78 characters where possible.
pub fn fold_header(name: &str, value: &str) -> String {
    let mut out = String::with_capacity(name.len() + value.len() + 8);
    out.push_str(name);
    out.push_str(": ");
    let mut line_len = out.len();
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 {
            if line_len + 1 + word.len() > 78 {
                out.push_str("\r\n ");
                line_len = 1;
            } else {
                out.push(' ');
                line_len += 1;
            }
        }
        out.push_str(word);
        line_len += word.len();
    }
    out.push_str("\r\n");
    out
}

/// Base64 in 76-character lines, CRLF-terminated.
pub fn base64_lines(data: &[u8]) -> Vec<u8> {
    let enc = B64.encode(data);
    let mut out = Vec::with_capacity(enc.len() + enc.len() / 76 * 2 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Normalises line ends to CRLF.
pub fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 40);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflow_joins_soft_breaks_and_keeps_hard_ones() {
        assert_eq!(unflow("Hello \r\nworld\r\nnext", false), "Hello world\nnext");
        assert_eq!(unflow("Hel \r\nlo", true), "Hello");
        assert_eq!(unflow(" >not a quote", false), ">not a quote");
        assert_eq!(unflow("text\r\n-- \r\nsig", false), "text\n-- \nsig");
    }

    #[test]
    fn quote_is_split_only_when_followed_by_blank_line() {
        assert_eq!(split_quote("> first\n> second\n\nmy answer"), (Some("first\nsecond".into()), "my answer".into()));
        assert_eq!(split_quote("> only a quote"), (Some("only a quote".into()), String::new()));
        assert_eq!(split_quote(">x\ncontinues"), (None, ">x\ncontinues".into()));
        assert_eq!(split_quote("no quote"), (None, "no quote".into()));
    }

    #[test]
    fn footer_is_stripped() {
        assert_eq!(strip_footer("hi\n-- \nSent with Delta Chat"), "hi");
        assert_eq!(strip_footer("hi -- there"), "hi -- there");
    }

    #[test]
    fn html_becomes_text() {
        assert_eq!(
            html_to_text(
                "<html><style>p{}</style><p>Hi &amp; <b>bye</b></p><p>x&#33;&lt;</p><script>alert(1)</script>"
            ),
            "Hi & bye\nx!<"
        );
    }

    /// Bytes scanned by `html_to_text(input)`.
    fn html_work(input: &str) -> u64 {
        SCANNED.with(|c| c.set(0));
        let _ = html_to_text(input);
        SCANNED.with(std::cell::Cell::get)
    }

    /// Issue #10: 800 k `&` took 59 s and 50 k `<script>` 151 s. Every search now goes through
    /// a counter; the work per input byte is bounded and doubling the input doubles the work.
    #[test]
    fn html_to_text_work_is_linear_on_hostile_input() {
        let units = ["&", "&#x1", "<script></script>", "<STYLE>x</style >", "<script><", "<b>&lt", "a;&"];
        for unit in units {
            let n = 256 * 1024 / unit.len();
            let (small, large) = (unit.repeat(n), unit.repeat(2 * n));
            let (w1, w2) = (html_work(&small), html_work(&large));
            assert!(w1 <= 16 * small.len() as u64, "{unit:?}: {w1} bytes scanned for {} bytes", small.len());
            assert!(w2 * 10 <= w1 * 21, "{unit:?}: twice the input cost {w2} vs {w1}");
        }
    }

    #[test]
    fn html_over_the_budget_is_cut_and_marked() {
        let html = format!("<p>{}</p>", "ä".repeat(MAX_HTML_BYTES));
        let text = html_to_text(&html);
        assert!(text.ends_with(TRUNCATED), "marked");
        assert!(text.len() <= MAX_HTML_BYTES + TRUNCATED.len());
        assert_eq!(html_to_text("a<SCRIPT>x</Script>b&#x41;&amp"), "abA&amp");
    }

    #[test]
    fn encoded_words_stay_short_and_round_trip_through_utf8() {
        let long = "Grüße aus Köln, ein sehr langer Name mit Umlauten äöü ".repeat(3);
        let enc = encode_words(&long);
        assert!(enc.split(' ').all(|w| w.len() <= 75), "{enc}");
        assert_eq!(encode_words("plain"), "plain");
        assert_eq!(encode_display_name("A \"B\""), "\"A \\\"B\\\"\"");
    }

    #[test]
    fn filename_param_encodes_non_ascii() {
        assert_eq!(filename_param("filename", "a b.txt"), "filename=\"a b.txt\"");
        assert_eq!(filename_param("filename", "ä.txt"), "filename*=utf-8''%C3%A4.txt");
    }

    #[test]
    fn folding_keeps_lines_short() {
        let v = "word ".repeat(40);
        let folded = fold_header("References", v.trim());
        assert!(folded.split("\r\n").all(|l| l.len() <= 78));
    }
}
