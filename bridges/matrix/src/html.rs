//! Matrix `formatted_body` HTML → readable plain text for COI: tags are dropped (nothing of the HTML survives), structure becomes text (lines, list dashes, quotes, link targets).

/// At most this much HTML is read; Matrix events are at most 64 KiB anyway. Longer input
/// is cut off and marked with [`TRUNCATED`].
pub const MAX_INPUT: usize = 256 * 1024;

/// Appended where input over [`MAX_INPUT`] was cut off.
pub const TRUNCATED: &str = " […]";

/// Nesting of quotes, lists and links that is rendered; deeper levels render as their
/// parent. Without it 10 k nested quotes around 30 k lines would be 600 MB of `> `.
pub const MAX_NESTING: usize = 16;

/// Tags whose whole content is dropped: the reply fallback and things that are never text.
const SKIPPED: &[&str] = &["mx-reply", "script", "style", "head", "title"];

fn decode_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        _ => {
            let n = name.strip_prefix('#')?;
            let code = match n.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(code).filter(|c| !c.is_control() || *c == '\n')
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Bytes the converter looked at, so tests can show the work is linear.
    static SCANNED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts `n` bytes looked at (tests only).
#[inline]
fn scanned(n: usize) {
    #[cfg(test)]
    SCANNED.with(|c| c.set(c.get() + n as u64));
    #[cfg(not(test))]
    let _ = n;
}

/// Position of the ASCII byte `b` in `hay`; every search of the converter goes through here.
fn find_ascii(hay: &str, b: u8) -> Option<usize> {
    let found = hay.as_bytes().iter().position(|&x| x == b);
    scanned(found.map_or(hay.len(), |i| i + 1));
    found
}

/// Decodes character references; unknown ones stay as written.
fn decode(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(i) = find_ascii(rest, b'&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        // The `;` must come within 10 bytes: never search further than that.
        let window = &rest.as_bytes()[1..rest.len().min(12)];
        scanned(window.len());
        match window.iter().position(|&b| b == b';').and_then(|j| decode_entity(&rest[1..=j]).map(|c| (c, j))) {
            Some((c, j)) => {
                out.push(c);
                rest = &rest[j + 2..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
}

/// One parsed tag: its lower-case name, whether it closes, and its `href`.
struct Tag {
    name: String,
    closing: bool,
    href: Option<String>,
}

fn parse_tag(inner: &str) -> Tag {
    let inner = inner.trim();
    let (closing, inner) = match inner.strip_prefix('/') {
        Some(r) => (true, r),
        None => (false, inner),
    };
    let name: String =
        inner.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>().to_ascii_lowercase();
    let href = inner.find("href=").and_then(|i| {
        let v = &inner[i + 5..];
        let (q, v) = match v.chars().next() {
            Some(q @ ('"' | '\'')) => (Some(q), &v[1..]),
            _ => (None, v),
        };
        let end = match q {
            Some(q) => v.find(q)?,
            None => v.find(|c: char| c.is_whitespace() || c == '>').unwrap_or(v.len()),
        };
        let mut s = String::new();
        decode(&v[..end], &mut s);
        Some(s)
    });
    Tag { name, closing, href }
}

/// Appends text, collapsing runs of whitespace (outside `<pre>`).
fn push_text(out: &mut String, text: &str, pre: bool) {
    let mut decoded = String::new();
    decode(text, &mut decoded);
    if pre {
        out.push_str(&decoded);
        return;
    }
    for c in decoded.chars() {
        if c.is_whitespace() {
            if !out.is_empty() && !out.ends_with([' ', '\n']) {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
}

fn newline(out: &mut String) {
    while out.ends_with(' ') {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// The readable text of a Matrix HTML body.
pub fn to_text(html: &str) -> String {
    let truncated = html.len() > MAX_INPUT;
    let html = &html[..html.floor_char_boundary(MAX_INPUT)];
    let mut out = String::new();
    // Open quotes/lists/links beyond MAX_NESTING: counted, not rendered.
    let (mut quotes_over, mut lists_over, mut links_over) = (0usize, 0usize, 0usize);
    let mut rest = html;
    let mut skip: Option<String> = None;
    let mut pre = false;
    let mut quote_start: Vec<usize> = Vec::new();
    let mut lists: Vec<Option<u32>> = Vec::new();
    let mut links: Vec<(usize, Option<String>)> = Vec::new();
    while !rest.is_empty() {
        let Some(lt) = find_ascii(rest, b'<') else {
            if skip.is_none() {
                push_text(&mut out, rest, pre);
            }
            break;
        };
        if skip.is_none() {
            push_text(&mut out, &rest[..lt], pre);
        }
        rest = &rest[lt + 1..];
        let Some(gt) = find_ascii(rest, b'>') else {
            // A lone `<` is text.
            if skip.is_none() {
                push_text(&mut out, &format!("<{rest}"), pre);
            }
            break;
        };
        let tag = parse_tag(&rest[..gt]);
        rest = &rest[gt + 1..];
        if let Some(s) = &skip {
            if tag.closing && tag.name == *s {
                skip = None;
            }
            continue;
        }
        match (tag.name.as_str(), tag.closing) {
            (name, false) if SKIPPED.contains(&name) => skip = Some(name.to_owned()),
            ("br", _) => {
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push('\n');
            }
            ("p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "tr" | "hr", _) => newline(&mut out),
            ("pre", closing) => {
                newline(&mut out);
                pre = !closing;
            }
            ("b" | "strong", _) => out.push('*'),
            ("i" | "em", _) => out.push('_'),
            ("del" | "s" | "strike", _) => out.push('~'),
            ("code", _) if !pre => out.push('`'),
            ("ul" | "ol", false) => {
                newline(&mut out);
                if lists.len() < MAX_NESTING {
                    lists.push((tag.name == "ol").then_some(1));
                } else {
                    lists_over += 1;
                }
            }
            ("ul" | "ol", true) => {
                if lists_over > 0 {
                    lists_over -= 1;
                } else {
                    lists.pop();
                }
                newline(&mut out);
            }
            ("li", false) => {
                newline(&mut out);
                let depth = lists.len().saturating_sub(1);
                out.push_str(&"  ".repeat(depth));
                match lists.last_mut() {
                    Some(Some(n)) => {
                        out.push_str(&format!("{n}. "));
                        *n += 1;
                    }
                    _ => out.push_str("- "),
                }
            }
            ("blockquote", false) => {
                newline(&mut out);
                if quote_start.len() < MAX_NESTING {
                    quote_start.push(out.len());
                } else {
                    quotes_over += 1;
                }
            }
            ("blockquote", true) if quotes_over > 0 => {
                quotes_over -= 1;
                newline(&mut out);
            }
            ("blockquote", true) => {
                if let Some(start) = quote_start.pop() {
                    // Each byte is quoted at most MAX_NESTING times.
                    scanned(out.len() - start);
                    let quoted: String = out[start..]
                        .trim_end()
                        .lines()
                        .map(|l| if l.is_empty() { ">".to_owned() } else { format!("> {l}") })
                        .collect::<Vec<_>>()
                        .join("\n");
                    out.truncate(start);
                    out.push_str(&quoted);
                }
                newline(&mut out);
            }
            ("a", false) if links.len() < MAX_NESTING => links.push((out.len(), tag.href)),
            ("a", false) => links_over += 1,
            ("a", true) if links_over > 0 => links_over -= 1,
            ("a", true) => {
                if let Some((start, Some(href))) = links.pop() {
                    // Each byte is in at most MAX_NESTING labels.
                    scanned(out.len() - start);
                    let label = out[start..].trim();
                    let shown = href.strip_prefix("mailto:").unwrap_or(&href);
                    // matrix.to pills show as their label; other links keep their target.
                    let empty = label.is_empty();
                    let show_target = !empty && label != shown && !href.starts_with("https://matrix.to/");
                    if show_target {
                        out.push_str(&format!(" ({shown})"));
                    } else if empty {
                        out.push_str(shown);
                    }
                }
            }
            _ => {}
        }
    }
    let mut text = out.trim().to_owned();
    if truncated {
        text.push_str(TRUNCATED);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::to_text;

    #[test]
    fn markup_becomes_readable_text() {
        assert_eq!(to_text("<b>bold</b> and <em>it</em> &amp; <code>x&lt;y</code>"), "*bold* and _it_ & `x<y`");
        assert_eq!(to_text("line<br>next<br/>last"), "line\nnext\nlast");
        assert_eq!(to_text("<p>one</p><p>two</p>"), "one\ntwo");
        assert_eq!(to_text("<ul><li>a</li><li>b</li></ul>"), "- a\n- b");
        assert_eq!(to_text("<ol><li>a</li><li>b</li></ol>"), "1. a\n2. b");
        assert_eq!(to_text("<a href=\"https://x.org/\">site</a>"), "site (https://x.org/)");
        assert_eq!(to_text("<a href=\"https://matrix.to/#/@a:hs\">Alice</a>: hi"), "Alice: hi");
        assert_eq!(to_text("<blockquote><p>said</p><p>more</p></blockquote>answer"), "> said\n> more\nanswer");
        assert_eq!(to_text("<pre><code>fn  main()\n  {}</code></pre>"), "fn  main()\n  {}");
    }

    #[test]
    fn hostile_html_leaves_no_markup() {
        assert_eq!(to_text("<mx-reply><blockquote>quoted</blockquote></mx-reply>the reply"), "the reply");
        assert_eq!(to_text("<script>alert(1)</script>hi<style>p{}</style>"), "hi");
        assert_eq!(to_text("<img src=x onerror=alert(1)>pic"), "pic");
        assert_eq!(to_text("a < b"), "a < b");
        assert_eq!(to_text("&#0; &#x110000; &bogus; &#65;"), "&#0; &#x110000; &bogus; A");
        assert_eq!(to_text("<b"), "<b");
        let huge = to_text(&"<b>".repeat(200_000));
        let kept = huge.strip_suffix(super::TRUNCATED).expect("cut off and marked");
        assert!(kept.len() <= 256 * 1024 && kept.chars().all(|c| c == '*' || c == '<'), "bounded");
    }

    /// Bytes looked at and output length of `to_text(input)`.
    fn work(input: &str) -> (u64, usize) {
        super::SCANNED.with(|c| c.set(0));
        let out = to_text(input);
        (super::SCANNED.with(std::cell::Cell::get), out.len())
    }

    /// Issue #10: hostile HTML cost quadratic time (`&` runs searched to the end for `;`,
    /// nested quotes and links re-read everything inside them) and nested lists and quotes
    /// quadratic output. Work and output per input byte are now bounded, and doubling the
    /// input at most doubles them.
    #[test]
    fn work_and_output_are_linear_on_hostile_html() {
        let shapes: [(&str, &str, &str); 7] = [
            ("", "&", ""),
            ("", "&#x1", ""),
            ("<blockquote>", "x<br>", "</blockquote>"),
            ("<a href=\"https://x.org/\">", " <br>", "</a>"),
            ("<ul>", "<li>x", "</ul>"),
            ("<pre><a href=x>", "  ", "</a>"),
            ("<mx-reply>", "<b>", "</mx-reply>"),
        ];
        for (open, middle, close) in shapes {
            let build = |n: usize| format!("{}{}{}", open.repeat(n), middle.repeat(n), close.repeat(n));
            let n = 64 * 1024 / (open.len() + middle.len() + close.len());
            let (small, large) = (build(n), build(2 * n));
            assert!(large.len() <= super::MAX_INPUT, "the shapes stay within the input budget");
            let ((w1, o1), (w2, o2)) = (work(&small), work(&large));
            let len = small.len() as u64;
            assert!(w1 <= 40 * len, "{middle:?}: {w1} bytes looked at for {len} bytes");
            assert!(w2 * 10 <= w1 * 21, "{middle:?}: twice the input cost {w2} vs {w1}");
            assert!(o1 <= 40 * small.len() && o2 * 10 <= o1 * 21 + 64, "{middle:?}: output {o1} then {o2}");
        }
    }
}
