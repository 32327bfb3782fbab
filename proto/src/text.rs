//! Text that came from outside (graph names, paths, consumers, reasons
//! quoting them), made safe to print: one escaping used by every place
//! that shows it to a person — `check`, the `status` table, log lines,
//! worker argv. Raw control bytes could move a terminal's cursor, and a
//! newline could forge a line of our own (`refused link #9 ...`).
//!
//! Escapes, Rust-like and unambiguous (a backslash is escaped too):
//! `\\`, `\n`, `\r`, `\t`, `\0`, `\x1b` for other ASCII controls and DEL,
//! `\u{85}` for C1 controls and for the Unicode characters that reorder or
//! break lines (U+2028/2029, bidi marks and overrides). Everything else,
//! including other non-ASCII text, is kept as it is.
//!
//! JSON (`status --json`, control messages) keeps the raw text: serde
//! escapes it for JSON. Escaping belongs to the place that prints, once:
//! values are stored raw.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// `s` with every character of the module doc escaped.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push_escaped(&mut out, s, usize::MAX);
    Cow::Owned(out)
}

/// `Display` of `s`, escaped: `format!("{}", Escaped(name))`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            write_char(f, c)?;
        }
        Ok(())
    }
}

/// Append `s` escaped to `out`, at most `max` bytes of output; what does
/// not fit is cut at a character (never inside an escape) and `...`
/// appended. Returns false when something was cut.
pub fn push_escaped(out: &mut String, s: &str, max: usize) -> bool {
    push(out, s, max, false)
}

/// [`push_escaped`] for a value of a `key=value` line (the access log):
/// a space is escaped too (`\x20`), so a value is one word and a line
/// splits on spaces whatever its values hold. Empty shows as `-`.
pub fn push_word(out: &mut String, s: &str, max: usize) -> bool {
    if s.is_empty() {
        out.push('-');
        return true;
    }
    push(out, s, max, true)
}

fn push(out: &mut String, s: &str, max: usize, word: bool) -> bool {
    // Printable ASCII that fits, the common case (an access line has
    // several such values per request): as it is, not a char at a time.
    let plain = |b: u8| (b' '..0x7f).contains(&b) && b != b'\\' && !(word && b == b' ');
    if s.len() <= max && s.bytes().all(plain) {
        out.push_str(s);
        return true;
    }
    let mut used = 0usize;
    let mut one = String::new();
    for c in s.chars() {
        one.clear();
        if word && c == ' ' {
            one.push_str("\\x20");
        } else {
            let _ = write_char(&mut one, c);
        }
        if used + one.len() > max {
            out.push_str("...");
            return false;
        }
        used += one.len();
        out.push_str(&one);
    }
    true
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || reorders(c)
}

/// Unicode characters that break a line or reorder what is shown.
fn reorders(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

fn write_char(w: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\\' => w.write_str("\\\\"),
        '\n' => w.write_str("\\n"),
        '\r' => w.write_str("\\r"),
        '\t' => w.write_str("\\t"),
        '\0' => w.write_str("\\0"),
        c if c.is_ascii_control() => write!(w, "\\x{:02x}", c as u32),
        c if c.is_control() || reorders(c) => write!(w, "\\u{{{:x}}}", c as u32),
        c => w.write_char(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_backslash_become_visible_escapes() {
        assert_eq!(escape("plain /run/x.sock é"), "plain /run/x.sock é");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\r\tc\0d\u{1b}[2J\u{7f}\\n"),
            r"a\nb\r\tc\0d\x1b[2J\x7f\\n"
        );
        assert_eq!(
            escape("x\u{85}y\u{202e}z\u{2028}"),
            r"x\u{85}y\u{202e}z\u{2028}"
        );
        assert_eq!(Escaped("q\n").to_string(), r"q\n");
    }

    #[test]
    fn escaped_text_is_one_line_of_printable_characters() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let e = escape(&all);
        assert!(!e.chars().any(|c| c.is_control() || reorders(c)));
    }

    #[test]
    fn plain_text_is_kept_as_it_is_and_words_still_escape_spaces() {
        let mut out = String::new();
        assert!(push_word(&mut out, "GET", 3));
        assert!(!push_word(&mut out, " /a b", 6));
        assert!(push_escaped(&mut out, " /a b", 5));
        assert_eq!(out, r"GET\x20/a... /a b");
    }

    #[test]
    fn cut_never_splits_an_escape() {
        let mut out = String::new();
        assert!(!push_escaped(&mut out, "ab\ncd", 3));
        assert_eq!(out, "ab...");
        let mut out = String::new();
        assert!(push_escaped(&mut out, "ab\n", 4));
        assert_eq!(out, r"ab\n");
    }

    #[test]
    fn a_word_has_no_space_and_is_never_empty() {
        let mut out = String::new();
        assert!(push_word(&mut out, "GET /a b\n", 64));
        assert_eq!(out, r"GET\x20/a\x20b\n");
        let mut out = String::new();
        push_word(&mut out, "", 64);
        assert_eq!(out, "-");
        let mut out = String::new();
        assert!(!push_word(&mut out, "a b", 4));
        assert_eq!(out, "a...");
    }
}
