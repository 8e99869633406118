//! Escaping user text (labels, titles, messages) for the markdown files Keel writes: run
//! reports, sweep summaries, the stage reference. One home, so every table escapes the same way.

/// Escapes text for one cell of a GitHub-flavoured markdown table, so that a label (branch,
/// checkpoint, benchmark or sweep-cell name) cannot end a cell, a row or the table, nor inject
/// HTML.
///
/// `|` → `\|` and `\` → `\\` (so a label's own backslash cannot unescape the pipe after it);
/// `<`, `>`, `&` → `&lt;`, `&gt;`, `&amp;`; each line break (`\n`, `\r\n`, `\r`) → one space.
pub fn md_cell(s: &str) -> String {
    escape_markdown(s, true)
}

/// Text for a markdown heading or paragraph line: line breaks become spaces and HTML is
/// escaped as in [`md_cell`] (pipes are harmless outside tables and kept).
pub fn md_line(s: &str) -> String {
    escape_markdown(s, false)
}

fn escape_markdown(s: &str, in_table: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_table => out.push_str("\\\\"),
            '|' if in_table => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push(' ');
            }
            '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_escape_pipes_backslashes_html_and_line_breaks() {
        assert_eq!(md_cell(r"a|b\|c"), r"a\|b\\\|c");
        assert_eq!(md_cell("<b>&x</b>"), "&lt;b&gt;&amp;x&lt;/b&gt;");
        assert_eq!(md_cell("one\ntwo\r\nthree\rfour"), "one two three four");
        assert_eq!(md_cell("grpo-kl β=0.04"), "grpo-kl β=0.04");
    }

    #[test]
    fn lines_keep_pipes_and_backslashes() {
        assert_eq!(md_line("a|b\\c <i>\r\nx"), "a|b\\c &lt;i&gt; x");
    }
}
