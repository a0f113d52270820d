//! Matrix `formatted_body` HTML → readable plain text for COI: tags are dropped (nothing of the HTML survives), structure becomes text (lines, list dashes, quotes, link targets).

/// At most this much HTML is read; Matrix events are at most 64 KiB anyway.
const MAX_INPUT: usize = 256 * 1024;

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

/// Decodes character references; unknown ones stay as written.
fn decode(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match rest[1..].find(';').filter(|j| *j <= 10).and_then(|j| decode_entity(&rest[1..=j]).map(|c| (c, j))) {
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
    let html = &html[..html.floor_char_boundary(MAX_INPUT)];
    let mut out = String::new();
    let mut rest = html;
    let mut skip: Option<String> = None;
    let mut pre = false;
    let mut quote_start: Vec<usize> = Vec::new();
    let mut lists: Vec<Option<u32>> = Vec::new();
    let mut links: Vec<(usize, Option<String>)> = Vec::new();
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if skip.is_none() {
                push_text(&mut out, rest, pre);
            }
            break;
        };
        if skip.is_none() {
            push_text(&mut out, &rest[..lt], pre);
        }
        rest = &rest[lt + 1..];
        let Some(gt) = rest.find('>') else {
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
            ("ul", false) => {
                newline(&mut out);
                lists.push(None);
            }
            ("ol", false) => {
                newline(&mut out);
                lists.push(Some(1));
            }
            ("ul" | "ol", true) => {
                lists.pop();
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
                quote_start.push(out.len());
            }
            ("blockquote", true) => {
                if let Some(start) = quote_start.pop() {
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
            ("a", false) => links.push((out.len(), tag.href)),
            ("a", true) => {
                if let Some((start, Some(href))) = links.pop() {
                    let label = out[start..].trim().to_owned();
                    let shown = href.strip_prefix("mailto:").unwrap_or(&href);
                    // matrix.to pills show as their label; other links keep their target.
                    if !label.is_empty() && label != shown && !href.starts_with("https://matrix.to/") {
                        out.push_str(&format!(" ({shown})"));
                    } else if label.is_empty() {
                        out.push_str(shown);
                    }
                }
            }
            _ => {}
        }
    }
    out.trim().to_owned()
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
        assert!(huge.len() <= 256 * 1024 && huge.chars().all(|c| c == '*' || c == '<'), "bounded");
    }
}
