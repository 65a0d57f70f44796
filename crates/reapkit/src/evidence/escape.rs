//! Evidence is hostile input: command lines, test names, ids and paths come from processes,
//! environments, records and labels that anyone may have written. Before any of it reaches a
//! terminal or a CI log it goes through [`evidence`], so that it can neither move the cursor,
//! nor start a line of its own (a GitHub Actions workflow command such as `::add-mask::` or
//! `::stop-commands::` is only recognised at the start of a line), nor hide behind
//! right-to-left overrides, nor start a v1 `##[command]` anywhere.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character (C0, DEL, C1), line or paragraph separator and bidi
/// override written as a visible escape (`\n`, `\x1b`, `\u{202e}`), and `##[` as `##\[`.
/// Plain text comes back borrowed.
pub fn evidence(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) && !s.contains("##[") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out.replace("##[", "##\\["))
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(evidence("node server.js --port 0 ünïcode"), Cow::Borrowed(_)));
    }

    #[test]
    fn no_escaped_text_can_start_a_line_or_a_command() {
        let hostile = "sleep\n::add-mask::secret\r\n::stop-commands::x\x1b[2J\u{202e}txt ##[error]x\x7f\u{85}";
        let out = evidence(hostile);
        assert!(!out.contains('\n') && !out.contains('\r') && !out.contains('\x1b') && !out.contains('\u{85}'));
        assert!(!out.contains("##[") && !out.contains('\u{202e}'), "{out}");
        assert_eq!(
            out,
            "sleep\\n::add-mask::secret\\r\\n::stop-commands::x\\x1b[2J\\u{202e}txt ##\\[error]x\\x7f\\x85"
        );
    }
}
