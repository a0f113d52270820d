//! Telegram's documented limits (core.telegram.org/bots/api), in one place: the bridge keeps to them, `capabilities()` announces them, and the Bot API double in tests enforces the same constants.

/// The most characters of a message text, counted after entity parsing (Telegram counts
/// UTF-16 code units: an emoji outside the BMP is two).
pub const MAX_TEXT: usize = 4096;

/// The most characters of a media caption, after entity parsing (UTF-16 code units).
pub const MAX_CAPTION: usize = 1024;

/// The largest picture `sendPhoto` takes ("The photo must be at most 10 MB in size").
pub const MAX_PHOTO_BYTES: u64 = 10 * 1024 * 1024;

/// The largest file a bot may upload with any method ("50 MB for other files").
pub const MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024;

/// The emoji `setMessageReaction` takes as a `ReactionTypeEmoji`, exactly as the Bot API
/// documentation lists them (no U+FE0F variation selectors; ZWJ sequences as written).
/// Anything else is answered with 400 `REACTION_INVALID` (😂, for one, is not here).
#[rustfmt::skip]
pub const REACTION_EMOJI: &[&str] = &[
    "👍", "👎", "❤", "🔥", "🥰", "👏", "😁", "🤔", "🤯", "😱", "🤬", "😢", "🎉", "🤩", "🤮", "💩", "🙏", "👌", "🕊",
    "🤡", "🥱", "🥴", "😍", "🐳", "❤\u{200d}🔥", "🌚", "🌭", "💯", "🤣", "⚡", "🍌", "🏆", "💔", "🤨", "😐", "🍓",
    "🍾", "💋", "🖕", "😈", "😴", "😭", "🤓", "👻", "👨\u{200d}💻", "👀", "🎃", "🙈", "😇", "😨", "🤝", "✍", "🤗",
    "🫡", "🎅", "🎄", "☃", "💅", "🤪", "🗿", "🆒", "💘", "🙉", "🦄", "😘", "💊", "🙊", "😎", "👾", "🤷\u{200d}♂",
    "🤷", "🤷\u{200d}♀", "😡",
];

/// How long Telegram counts `s`: UTF-16 code units.
pub fn text_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// The emoji as Telegram spells it in [`REACTION_EMOJI`]: variation selectors dropped
/// ("❤️" → "❤"), if that makes it an allowed one.
pub fn reaction_emoji(emoji: &str) -> Option<&'static str> {
    let bare: String = emoji.chars().filter(|c| !matches!(c, '\u{fe0e}' | '\u{fe0f}')).collect();
    REACTION_EMOJI.iter().copied().find(|e| *e == bare)
}

/// Whether `data` is an OGG stream carrying Opus (its first page holds an `OpusHead`
/// packet): the only OGG Telegram plays as a voice note.
pub fn is_ogg_opus(data: &[u8]) -> bool {
    // Page header: "OggS", version, type, granule (8), serial (4), seq (4), crc (4),
    // segment count, then the segment table; the first packet follows.
    if data.len() < 27 || !data.starts_with(b"OggS") {
        return false;
    }
    let segments = usize::from(data[26]);
    let start = 27 + segments;
    data.get(start..start + 8).is_some_and(|p| p == b"OpusHead")
}

/// Whether `data` is MP3 (an ID3 tag or an MPEG audio frame sync) or M4A (an ISO BMFF
/// `ftyp` box): the other formats `sendVoice` takes.
pub fn is_mp3_or_m4a(data: &[u8]) -> bool {
    data.starts_with(b"ID3")
        || (data.len() >= 2 && data[0] == 0xFF && data[1] & 0xE0 == 0xE0)
        || data.get(4..8).is_some_and(|b| b == b"ftyp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_as_the_docs_list_them() {
        assert_eq!(REACTION_EMOJI.len(), 73);
        assert_eq!(reaction_emoji("❤\u{fe0f}"), Some("❤"));
        assert_eq!(reaction_emoji("👍"), Some("👍"));
        assert_eq!(reaction_emoji("😂"), None);
        assert_eq!(text_len("a😂"), 3);
    }

    #[test]
    fn opus_is_told_from_other_ogg() {
        let mut page = b"OggS\0\x02".to_vec();
        page.extend([0u8; 20]);
        page.push(1); // one segment
        page.push(19);
        let mut opus = page.clone();
        opus.extend(b"OpusHead\x01\x01");
        let mut vorbis = page;
        vorbis.extend(b"\x01vorbis\0\0\0\0");
        assert!(is_ogg_opus(&opus));
        assert!(!is_ogg_opus(&vorbis));
        assert!(!is_ogg_opus(b"OggS"));
        assert!(is_mp3_or_m4a(b"ID3\x04"));
        assert!(is_mp3_or_m4a(b"\0\0\0\x20ftypM4A "));
        assert!(!is_mp3_or_m4a(b"voice.ogg"));
    }
}
