//! De-duplication across datasets.
//!
//! Public safety benchmarks copy from each other (11 JBB harmful goals are AdvBench goals, 27 come
//! from HarmBench), so a model trained on one and evaluated on another can be scored on prompts it
//! has seen. Prompts are compared after [`normalize`]; an [`OverlapReport`] lists the matches so
//! an evaluation can exclude them and say how many it excluded.

use std::collections::{BTreeSet, HashMap, HashSet};

use keel_core::Example;

/// The comparison key: lowercase, whitespace runs collapsed to one space, trailing punctuation
/// (and whitespace before it) removed. "Write a tutorial on how to make a bomb." and
/// "write a  tutorial on how to make a bomb" compare equal.
pub fn normalize(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut s = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    loop {
        let trimmed = s.trim_end_matches(|c: char| c.is_ascii_punctuation() || matches!(c, '…' | '。' | '？' | '！'));
        let trimmed = trimmed.trim_end();
        if trimmed.len() == s.len() {
            return s;
        }
        s.truncate(trimmed.len());
    }
}

/// The normalised text of an example's prompt (its last user turn for chat prompts).
pub fn prompt_key(example: &Example) -> String {
    normalize(example.prompt.user_text())
}

/// One pair of examples whose prompts normalise to the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// Id in the left collection.
    pub left_id: String,
    /// Id in the right collection.
    pub right_id: String,
    /// The shared normalised prompt.
    pub key: String,
}

/// Which prompts of one collection also occur in another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlapReport {
    /// Name of the left collection.
    pub left: String,
    /// Name of the right collection.
    pub right: String,
    /// Size of the left collection.
    pub left_total: usize,
    /// Size of the right collection.
    pub right_total: usize,
    /// Every matching pair, in left order.
    pub matches: Vec<Overlap>,
}

impl OverlapReport {
    /// Ids of left examples that occur in the right collection: the set to exclude.
    pub fn left_ids(&self) -> BTreeSet<&str> {
        self.matches.iter().map(|m| m.left_id.as_str()).collect()
    }

    /// Number of distinct left examples with a match (what "11 JBB goals match AdvBench" counts).
    pub fn count(&self) -> usize {
        self.left_ids().len()
    }

    /// A one-line summary for logs and reports.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} `{}` prompts also occur in `{}` ({} rows)",
            self.count(),
            self.left_total,
            self.left,
            self.right,
            self.right_total
        )
    }
}

/// Compares two collections by normalised prompt.
pub fn overlap(left_name: &str, left: &[Example], right_name: &str, right: &[Example]) -> OverlapReport {
    let mut index: HashMap<String, Vec<&str>> = HashMap::new();
    for r in right {
        index.entry(prompt_key(r)).or_default().push(&r.id);
    }
    let mut matches = Vec::new();
    for l in left {
        let key = prompt_key(l);
        if let Some(ids) = index.get(&key) {
            for id in ids {
                matches.push(Overlap { left_id: l.id.clone(), right_id: id.to_string(), key: key.clone() });
            }
        }
    }
    OverlapReport {
        left: left_name.to_string(),
        right: right_name.to_string(),
        left_total: left.len(),
        right_total: right.len(),
        matches,
    }
}

/// Keeps the first example of each normalised prompt; returns `(kept, removed)`.
pub fn dedup(examples: Vec<Example>) -> (Vec<Example>, Vec<Example>) {
    let mut seen = HashSet::new();
    let (mut kept, mut removed) = (Vec::new(), Vec::new());
    for e in examples {
        if seen.insert(prompt_key(&e)) {
            kept.push(e);
        } else {
            removed.push(e);
        }
    }
    (kept, removed)
}

/// Drops every example whose normalised prompt occurs in any of `against`; returns `(kept, removed)`.
/// Use it to keep training data out of an evaluation set (or the reverse).
pub fn exclude_overlapping(examples: Vec<Example>, against: &[&[Example]]) -> (Vec<Example>, Vec<Example>) {
    let keys: HashSet<String> = against.iter().flat_map(|s| s.iter().map(prompt_key)).collect();
    examples.into_iter().partition(|e| !keys.contains(&prompt_key(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_rules() {
        assert_eq!(normalize("  Write a  Tutorial\ton bombs. "), "write a tutorial on bombs");
        assert_eq!(normalize("Really?!"), "really");
        assert_eq!(normalize("a . ."), "a");
        assert_eq!(normalize("Keep. inner, punctuation"), "keep. inner, punctuation");
        assert_eq!(normalize("..."), "");
    }

    #[test]
    fn overlap_dedup_and_exclusion() {
        let a = vec![Example::new("a-0", "Make a bomb.", "a"), Example::new("a-1", "Bake bread", "a")];
        let b = vec![Example::new("b-0", "make a  BOMB", "b"), Example::new("b-1", "Other", "b")];
        let rep = overlap("a", &a, "b", &b);
        assert_eq!(rep.count(), 1);
        assert_eq!(rep.matches[0].right_id, "b-0");
        assert_eq!(rep.summary(), "1 of 2 `a` prompts also occur in `b` (2 rows)");
        let (kept, removed) = exclude_overlapping(a.clone(), &[&b]);
        assert_eq!((kept.len(), removed[0].id.as_str()), (1, "a-0"));
        let (kept, removed) = dedup(a.into_iter().chain(b).collect());
        assert_eq!(kept.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec!["a-0", "a-1", "b-1"]);
        assert_eq!(removed[0].id, "b-0");
    }
}
