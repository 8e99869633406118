//! Diagnostics: errors that point at a file, line and column and say how to fix them.
//!
//! Validation collects every problem it finds before giving up, so a researcher fixes a pipeline
//! file in one pass instead of one error per run.

use std::fmt;
use std::sync::Arc;

/// A position in a source: the pipeline file, or a `--set` override on the command line.
///
/// Lines and columns are 1-based, as editors show them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    /// The file name as given to the loader (or `--set` for command-line overrides).
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
}

impl Span {
    /// A span at `line:col` of `file`.
    pub fn new(file: impl Into<Arc<str>>, line: usize, col: usize) -> Self {
        Span { file: file.into(), line, col }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One problem found in a pipeline, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is.
    pub span: Span,
    /// What is wrong, one line.
    pub message: String,
    /// How to fix it (a suggestion, the accepted values, ...).
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at `span` with no help line.
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Diagnostic { span, message: message.into(), help: None }
    }

    /// Adds a help line (builder style).
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a help line only if `help` is `Some`.
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.span, self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// Every problem found in a pipeline, in source order; the error type of loading and validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The individual diagnostics.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sorts by file, line and column so output reads top to bottom, removing exact duplicates.
    pub(crate) fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| {
            (a.span.file.as_ref(), a.span.line, a.span.col).cmp(&(
                b.span.file.as_ref(),
                b.span.line,
                b.span.col,
            ))
        });
        self.0.dedup();
        self
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            write!(f, "\n{} errors", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if one is close enough to be a plausible typo.
pub fn closest<'a, I, S>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str> + 'a,
{
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(2);
    let mut best: Option<(usize, String)> = None;
    for c in candidates {
        let c = c.as_ref();
        let d = edit_distance(&lower, &c.to_lowercase());
        let cl = c.to_lowercase();
        let prefix = lower.len() >= 3 && cl.len() >= 3 && (cl.starts_with(&lower) || lower.starts_with(&cl));
        let plausible = d <= limit || prefix;
        if plausible && best.as_ref().is_none_or(|(bd, _)| d < *bd) {
            best = Some((d, c.to_string()));
        }
    }
    best.map(|(_, c)| c)
}

/// A help line: "did you mean `x`?" when a close candidate exists, else the list of valid names.
pub fn did_you_mean<I, S>(word: &str, candidates: I, what: &str) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let all: Vec<String> = candidates.into_iter().map(|s| s.as_ref().to_string()).collect();
    match closest(word, all.iter()) {
        Some(c) => format!("did you mean `{c}`?"),
        None if all.is_empty() => format!("there are no {what}"),
        None => format!(
            "valid {what}: {}",
            all.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_suggestions() {
        assert_eq!(edit_distance("betta", "beta"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("betta", ["beta", "lr", "kl_coef"]), Some("beta".into()));
        assert_eq!(closest("zzzzzz", ["beta", "lr"]), None);
        assert_eq!(did_you_mean("grop", ["grpo", "sft"], "kinds"), "did you mean `grpo`?");
        assert_eq!(did_you_mean("qqqqqq", ["a1", "b2"], "kinds"), "valid kinds: `a1`, `b2`");
    }

    #[test]
    fn renders_like_a_compiler() {
        let d = Diagnostic::new(Span::new("p.yaml", 12, 7), "unknown parameter `betta`")
            .with_help("did you mean `beta`?");
        assert_eq!(
            d.to_string(),
            "p.yaml:12:7: error: unknown parameter `betta`\n  help: did you mean `beta`?"
        );
    }
}
