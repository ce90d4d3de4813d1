//! Neutralising hostile text before a human sees it.
//!
//! Text that came from a capsule (plan summary, each change's `why`,
//! findings, host log lines, error details, the manifest's description and
//! provenance) or from a client is hostile: an escape sequence can erase a
//! line of a terminal and redraw a plan that hides a change, a carriage
//! return can overwrite the start of a line, and a bidirectional override can
//! make `txt.exe` read as `exe.txt`. Such text never reaches a terminal, log,
//! page or report as it is.
//!
//! What is neutralised, and how: every character in one of the classes below
//! is replaced by the visible escape `\u{XXXX}` (or `\n`, `\r`, `\t`), so the
//! reader sees that something was there and what it was:
//!
//! 1. C0 controls (U+0000–U+001F) and DEL (U+007F): ESC starts ANSI CSI/OSC
//!    sequences, CR and BS move the cursor, BEL rings.
//! 2. C1 controls (U+0080–U+009F): U+009B is a one-byte CSI and U+009D a
//!    one-byte OSC on terminals that honour 8-bit controls.
//! 3. Bidirectional formatting: LRM/RLM/ALM (U+200E, U+200F, U+061C),
//!    embeddings and overrides (U+202A–U+202E), isolates (U+2066–U+2069).
//! 4. Invisible characters that hide or split text: zero-width space/joiners
//!    (U+200B–U+200D), word joiner and invisible operators (U+2060–U+2064),
//!    BOM (U+FEFF), line and paragraph separators (U+2028, U+2029),
//!    interlinear annotation (U+FFF9–U+FFFB).
//!
//! [`line()`] neutralises newlines and tabs too (one field, one line: a `why`
//! cannot print a second line that looks like the runner's); [`block()`] keeps
//! newlines for multi-line text such as captured output, which callers
//! indent under a label. Both are idempotent: a backslash is left alone, so
//! already-neutralised text is unchanged.
//!
//! [`Terminal`] is the last line of defence for a whole output stream: every
//! byte the runner writes to a terminal goes through it, so a field someone
//! forgot to clean still cannot move the cursor. It keeps `\n` and `\t`.
//! Its escapes use the JSON form `\uXXXX`, so JSON output stays valid JSON
//! meaning the same string (serde already escapes C0 controls; the stream
//! rewrites C1 controls and bidi characters inside strings).

use std::borrow::Cow;
use std::io::{self, Write};

/// Whether `c` must never reach a human as it is (newlines and tabs aside).
fn is_dangerous(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{61c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

fn needs(s: &str, keep_newlines: bool) -> bool {
    s.chars().any(|c| is_dangerous(c) || (!keep_newlines && (c == '\n' || c == '\t')))
}

fn rewrite(s: &str, keep_newlines: bool) -> String {
    let mut o = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' if keep_newlines => o.push('\n'),
            '\t' if keep_newlines => o.push('\t'),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if is_dangerous(c) => {
                use std::fmt::Write as _;
                let _ = write!(o, "\\u{{{:04x}}}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// `s` as one line a human can read safely: controls, escape sequences,
/// bidi overrides, invisible characters, newlines and tabs made visible.
pub fn line(s: &str) -> Cow<'_, str> {
    if needs(s, false) { Cow::Owned(rewrite(s, false)) } else { Cow::Borrowed(s) }
}

/// As [`line()`], but newlines and tabs are kept (multi-line text the caller
/// shows indented under a label, such as captured output).
pub fn block(s: &str) -> Cow<'_, str> {
    if needs(s, true) { Cow::Owned(rewrite(s, true)) } else { Cow::Borrowed(s) }
}

/// Hostile text for `format!`: `{}` shows it through [`line()`].
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&line(self.0))
    }
}

/// A writer that neutralises everything written through it (all of
/// [`line()`]'s classes except newline and tab), for whole output streams.
/// Invalid UTF-8 is shown as `\xNN`. Call [`Write::flush`] (or drop it) at
/// the end: an incomplete UTF-8 sequence at the very end is then escaped.
#[derive(Debug)]
pub struct Terminal<W: Write> {
    inner: W,
    /// Bytes of a UTF-8 sequence split across two writes.
    pending: Vec<u8>,
}

impl<W: Write> Terminal<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, pending: Vec::new() }
    }

    fn emit(&mut self, s: &str) -> io::Result<()> {
        if !s.chars().any(is_dangerous) {
            return self.inner.write_all(s.as_bytes());
        }
        let mut o = String::with_capacity(s.len() + 16);
        for c in s.chars() {
            if is_dangerous(c) {
                use std::fmt::Write as _;
                let _ = write!(o, "\\u{:04x}", c as u32);
            } else {
                o.push(c);
            }
        }
        self.inner.write_all(o.as_bytes())
    }

    fn drain(&mut self, at_end: bool) -> io::Result<()> {
        let bytes = std::mem::take(&mut self.pending);
        let mut rest: &[u8] = &bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.emit(s)?;
                    return Ok(());
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    self.emit(std::str::from_utf8(good).unwrap_or_default())?;
                    match e.error_len() {
                        Some(n) => {
                            for b in &bad[..n] {
                                write!(self.inner, "\\x{b:02x}")?;
                            }
                            rest = &bad[n..];
                        }
                        // An incomplete sequence at the end: wait for more.
                        None if !at_end => {
                            self.pending = bad.to_vec();
                            return Ok(());
                        }
                        None => {
                            for b in bad {
                                write!(self.inner, "\\x{b:02x}")?;
                            }
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

impl<W: Write> Write for Terminal<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        self.drain(false)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain(true)?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_one_visible_line() {
        assert_eq!(line("plain text, ünïcödé"), "plain text, ünïcödé");
        assert!(matches!(line("plain"), Cow::Borrowed(_)));
        assert_eq!(line("a\x1b[2K\x1b[1Ab"), "a\\u{001b}[2K\\u{001b}[1Ab");
        assert_eq!(line("x\ny\rz\tw"), "x\\ny\\rz\\tw");
        assert_eq!(line("txt\u{202e}exe.sh"), "txt\\u{202e}exe.sh");
        assert_eq!(line("\u{9b}31m"), "\\u{009b}31m");
        assert_eq!(line("a\u{200b}b\u{2066}c\u{feff}"), "a\\u{200b}b\\u{2066}c\\u{feff}");
    }

    #[test]
    fn blocks_keep_newlines_only() {
        assert_eq!(block("one\ntwo\r\n\x07"), "one\ntwo\\r\n\\u{0007}");
    }

    #[test]
    fn neutralising_is_idempotent() {
        for s in ["\x1b]0;title\x07", "a\u{202e}b\nc", "\\u{001b}"] {
            let once = line(s).into_owned();
            assert_eq!(line(&once), once);
            let once = block(s).into_owned();
            assert_eq!(block(&once), once);
        }
    }

    fn through_terminal(chunks: &[&[u8]]) -> String {
        let mut t = Terminal::new(Vec::new());
        for c in chunks {
            t.write_all(c).unwrap();
        }
        t.flush().unwrap();
        String::from_utf8(t.inner.clone()).unwrap()
    }

    #[test]
    fn the_stream_keeps_newlines_and_escapes_the_rest() {
        assert_eq!(through_terminal(&[b"ok\n\tindented\n"]), "ok\n\tindented\n");
        assert_eq!(through_terminal(&[b"\x1b[2Kx\r"]), "\\u001b[2Kx\\u000d");
        // U+202E is E2 80 AE: split across writes it is still caught.
        assert_eq!(through_terminal(&[b"a\xe2", b"\x80", b"\xaeb"]), "a\\u202eb");
        // Invalid UTF-8 and a sequence cut off at the end are shown, not passed on.
        assert_eq!(through_terminal(&[b"\xff\xc2"]), "\\xff\\xc2");
    }

    #[test]
    fn json_through_the_stream_stays_json_with_the_same_meaning() {
        let v = serde_json::json!({"why": "a\u{202e}b\u{9b}c\u{1b}d"});
        let text = serde_json::to_string(&v).unwrap();
        let out = through_terminal(&[text.as_bytes()]);
        assert!(!out.contains('\u{202e}') && !out.contains('\u{9b}') && !out.contains('\u{1b}'));
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, v);
    }

    proptest::proptest! {
        #[test]
        fn nothing_dangerous_survives(s in "\\PC*|[\\x00-\\x1f\\x7f-\\u{9f}\\u{2028}-\\u{202e}\\u{2066}-\\u{2069}a\\n]{0,40}") {
            proptest::prop_assert!(!line(&s).chars().any(|c| is_dangerous(c) || c == '\n'));
            proptest::prop_assert!(!block(&s).chars().any(is_dangerous));
            let out = through_terminal(&[s.as_bytes()]);
            proptest::prop_assert!(!out.chars().any(is_dangerous));
        }
    }
}
