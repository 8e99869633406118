//! A YAML tree that remembers where every node came from.
//!
//! serde_yaml gives typed values but forgets positions and silently accepts duplicate keys, so the
//! loader parses with yaml-rust2's marked event parser into this spanned tree, reports duplicate
//! keys itself, and converts nodes to `serde_yaml::Value` only where typed values are needed.

use std::collections::HashMap;
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{Diagnostic, Diagnostics, Span};

/// The shape of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar as written; `plain` is false for quoted and block scalars, which are always strings.
    Scalar {
        /// The scalar's text after YAML unescaping.
        text: String,
        /// True for unquoted scalars, whose type (null, bool, number, string) is resolved from the text.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping in source order (duplicate keys are reported and dropped by the parser).
    Map(Vec<(Node, Node)>),
}

/// A YAML node with its source position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub kind: NodeKind,
    /// Where it starts.
    pub span: Span,
}

impl Node {
    /// A plain scalar (type resolved from the text).
    pub fn scalar(text: impl Into<String>, span: Span) -> Self {
        Node { kind: NodeKind::Scalar { text: text.into(), plain: true }, span }
    }

    /// An empty mapping.
    pub fn empty_map(span: Span) -> Self {
        Node { kind: NodeKind::Map(Vec::new()), span }
    }

    /// The text of a scalar node.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The entries of a mapping node.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// True for `null`, `~` and empty plain scalars.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true } if is_null_text(text))
    }

    /// The value under a string key of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v)
    }

    /// Mutable access to the value under a string key of a mapping node.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.kind {
            NodeKind::Map(m) => {
                m.iter_mut().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// A word for the node's shape, for error messages.
    pub fn shape(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "null",
            NodeKind::Scalar { .. } => "scalar",
            NodeKind::Seq(_) => "list",
            NodeKind::Map(_) => "mapping",
        }
    }

    /// The typed value (YAML 1.2 core schema resolution of plain scalars).
    pub fn to_value(&self) -> serde_yaml::Value {
        use serde_yaml::Value;
        match &self.kind {
            NodeKind::Scalar { text, plain: false } => Value::String(text.clone()),
            NodeKind::Scalar { text, plain: true } => resolve_plain(text),
            NodeKind::Seq(items) => Value::Sequence(items.iter().map(Node::to_value).collect()),
            NodeKind::Map(entries) => {
                let mut m = serde_yaml::Mapping::new();
                for (k, v) in entries {
                    m.insert(k.to_value(), v.to_value());
                }
                Value::Mapping(m)
            }
        }
    }

    /// Moves every span of this subtree: used to place values parsed out of a `--set` argument.
    pub(crate) fn shift(&mut self, file: &Arc<str>, col_offset: usize) {
        self.span.file = file.clone();
        self.span.col += col_offset;
        match &mut self.kind {
            NodeKind::Scalar { .. } => {}
            NodeKind::Seq(items) => items.iter_mut().for_each(|n| n.shift(file, col_offset)),
            NodeKind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                k.shift(file, col_offset);
                v.shift(file, col_offset);
            }),
        }
    }
}

fn is_null_text(t: &str) -> bool {
    matches!(t, "" | "~" | "null" | "Null" | "NULL")
}

fn looks_like_int(t: &str) -> bool {
    let d = t.strip_prefix(['-', '+']).unwrap_or(t);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

fn looks_like_float(t: &str) -> bool {
    let d = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exp) = match d.find(['e', 'E']) {
        Some(i) => (&d[..i], Some(&d[i + 1..])),
        None => (d, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int)
        && frac.is_none_or(digits)
        && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()));
    let exp_ok = exp.is_none_or(looks_like_int);
    mantissa_ok && exp_ok && (frac.is_some() || exp.is_some())
}

/// Resolves a plain scalar the way YAML 1.2's core schema does.
pub fn resolve_plain(t: &str) -> serde_yaml::Value {
    use serde_yaml::Value;
    if is_null_text(t) {
        return Value::Null;
    }
    match t {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Value::from(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::from(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::from(f64::NAN),
        _ => {}
    }
    if looks_like_int(t) {
        if let Ok(i) = t.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(u) = t.trim_start_matches('+').parse::<u64>() {
            return Value::from(u);
        }
        if let Ok(f) = t.parse::<f64>() {
            return Value::from(f);
        }
    }
    if let Some(h) = t.strip_prefix("0x") {
        if let Ok(u) = u64::from_str_radix(h, 16) {
            return Value::from(u);
        }
    }
    if let Some(o) = t.strip_prefix("0o") {
        if let Ok(u) = u64::from_str_radix(o, 8) {
            return Value::from(u);
        }
    }
    if looks_like_float(t) {
        if let Ok(f) = t.parse::<f64>() {
            return Value::from(f);
        }
    }
    Value::String(t.to_string())
}

/// Converts a YAML value to JSON for manifests; non-finite floats become strings (`.inf`, `.nan`),
/// non-string keys are rendered as YAML text.
pub fn yaml_to_json(v: &serde_yaml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    use serde_yaml::Value as Y;
    match v {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(num) => J::Number(num),
                    None if f.is_nan() => J::String(".nan".into()),
                    None if f > 0.0 => J::String(".inf".into()),
                    None => J::String("-.inf".into()),
                }
            }
        }
        Y::String(s) => J::String(s.clone()),
        Y::Sequence(items) => J::Array(items.iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, val) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    other => value_text(other),
                };
                out.insert(key, yaml_to_json(val));
            }
            J::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(&t.value),
    }
}

/// A compact one-line rendering of a YAML value, for messages and sweep cell ids.
pub fn value_text(v: &serde_yaml::Value) -> String {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => "null".into(),
        Y::Bool(b) => b.to_string(),
        Y::Number(n) => n.to_string(),
        Y::String(s) => s.clone(),
        other => serde_json::to_string(&yaml_to_json(other)).unwrap_or_else(|_| "?".into()),
    }
}

enum Frame {
    Seq { span: Span, anchor: usize, items: Vec<Node> },
    Map { span: Span, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

struct Builder {
    file: Arc<str>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    diags: Vec<Diagnostic>,
    /// Nodes copied by alias expansion so far; bounded so that nested aliases ("billion laughs")
    /// cannot exhaust memory.
    alias_nodes: usize,
    /// Documents started so far: a pipeline file holds exactly one.
    documents: usize,
}

/// Most nodes alias expansion may copy in one document.
const MAX_ALIAS_NODES: usize = 100_000;

fn node_count(n: &Node) -> usize {
    match &n.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        NodeKind::Map(entries) => 1 + entries.iter().map(|(k, v)| node_count(k) + node_count(v)).sum::<usize>(),
    }
}

impl Builder {
    fn span(&self, m: &Marker) -> Span {
        Span::new(self.file.clone(), m.line().max(1), m.col() + 1)
    }

    fn finish_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) if k.as_scalar().is_none() => {
                    // Every key of a pipeline file is a name; a list or mapping as a key (`? [a, b]`,
                    // `{[x]: 1}`) would otherwise be skipped by every lookup without a word.
                    self.diags.push(
                        Diagnostic::new(k.span.clone(), format!("a mapping key must be a plain name, found a {}", k.shape()))
                            .with_help("write keys as names, e.g. `learn:`; a `?` or a `[`/`{` before the colon makes a complex key"),
                    );
                }
                Some(k) => {
                    let dup = k.as_scalar().and_then(|name| {
                        entries.iter().find(|(ek, _)| ek.as_scalar() == Some(name)).map(|(ek, _)| ek)
                    });
                    if let Some(first) = dup {
                        let name = k.as_scalar().unwrap_or_default();
                        self.diags.push(
                            Diagnostic::new(k.span.clone(), format!("duplicate key `{name}`"))
                                .with_help(format!(
                                    "`{name}` is already defined at line {}, column {}; rename or remove one of them",
                                    first.span.line, first.span.col
                                )),
                        );
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let span = self.span(&mark);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == TScalarStyle::Plain && !forced_str;
                self.finish_node(Node { kind: NodeKind::Scalar { text, plain }, span }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq { span, anchor, items: Vec::new() })
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map { span, anchor, entries: Vec::new(), key: None })
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq { span, anchor, items }) => {
                    self.finish_node(Node { kind: NodeKind::Seq(items), span }, anchor)
                }
                Some(Frame::Map { span, anchor, entries, .. }) => {
                    self.finish_node(Node { kind: NodeKind::Map(entries), span }, anchor)
                }
                None => {}
            },
            Event::Alias(id) => {
                let size = self.anchors.get(&id).map(node_count).unwrap_or(0);
                let before = self.alias_nodes;
                self.alias_nodes = self.alias_nodes.saturating_add(size);
                let node = match self.anchors.get(&id) {
                    Some(_) if self.alias_nodes > MAX_ALIAS_NODES => {
                        if before <= MAX_ALIAS_NODES {
                            self.diags.push(
                            Diagnostic::new(span.clone(), "aliases expand to too many nodes")
                                .with_help(format!("a pipeline file may copy at most {MAX_ALIAS_NODES} nodes through aliases")),
                            );
                        }
                        Node::scalar("", span)
                    }
                    Some(n) => n.clone(),
                    None => {
                        self.diags.push(Diagnostic::new(span.clone(), "alias to an unknown anchor"));
                        Node::scalar("", span)
                    }
                };
                self.finish_node(node, 0);
            }
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.diags.push(
                        Diagnostic::new(span, "a second YAML document (after `---` or `...`) in a pipeline file")
                            .with_help("a pipeline file holds one document: remove the `---` line and what follows, or merge the two"),
                    );
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// The line and column (1-based, in characters) of byte offset `at` of `text`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..at.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    (line, String::from_utf8_lossy(&before[start..]).chars().count() + 1)
}

/// Parses a YAML text holding one document into a spanned tree.
///
/// An empty document gives a null node; syntax errors, duplicate keys, non-scalar keys, a second
/// document and NUL bytes are diagnostics with their line and column. A leading UTF-8 byte order
/// mark is skipped (editors on Windows write one).
pub fn parse_yaml(file: &str, text: &str) -> Result<Node, Diagnostics> {
    let file: Arc<str> = Arc::from(file);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(at) = text.find('\0') {
        // The scanner stops at a NUL, silently dropping everything after it.
        let (line, col) = line_col(text, at);
        return Err(Diagnostic::new(Span::new(file, line, col), "NUL byte in a YAML text")
            .with_help("a pipeline file is plain text; this looks like binary data or a corrupted file")
            .into());
    }
    if let Some(at) = text.find('\u{feff}') {
        // Invisible in an editor, it would make `use` a different key from `\u{feff}use`.
        let (line, col) = line_col(text, at);
        return Err(Diagnostic::new(Span::new(file, line, col), "byte order mark (U+FEFF) inside a YAML text")
            .with_help("delete this invisible character (only the very start of a file may hold one); files concatenated from several sources often carry one")
            .into());
    }
    let mut b = Builder {
        file: file.clone(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        diags: Vec::new(),
        alias_nodes: 0,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        let m = e.marker();
        let span = Span::new(file.clone(), m.line().max(1), m.col() + 1);
        return Err(Diagnostic::new(span, format!("YAML syntax error: {}", e.info())).with_help(
            "check the indentation, unclosed quotes or brackets, and that `key: value` pairs have a space after the colon",
        )
        .into());
    }
    if !b.diags.is_empty() {
        return Err(Diagnostics(b.diags).sorted());
    }
    Ok(b.root.unwrap_or_else(|| Node::scalar("", Span::new(file, 1, 1))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    #[test]
    fn positions_are_one_based() {
        let n = parse_yaml("f.yaml", "a: 1\nb:\n  c: [x, 'y']\n").unwrap();
        let b = n.get("b").unwrap();
        let c = b.get("c").unwrap();
        assert_eq!((c.span.line, c.span.col), (3, 6));
        let a = n.get("a").unwrap();
        assert_eq!((a.span.line, a.span.col), (1, 4));
        assert_eq!(c.to_value(), serde_yaml::from_str::<Value>("[x, y]").unwrap());
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let e = parse_yaml("f.yaml", "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e.0[0].message, "duplicate key `a`");
        assert_eq!((e.0[0].span.line, e.0[0].span.col), (3, 1));
    }

    #[test]
    fn scalar_resolution() {
        assert_eq!(resolve_plain("12"), Value::from(12));
        assert_eq!(resolve_plain("-3"), Value::from(-3));
        assert_eq!(resolve_plain("0.04"), Value::from(0.04));
        assert_eq!(resolve_plain("1e-3"), Value::from(1e-3));
        assert_eq!(resolve_plain("true"), Value::Bool(true));
        assert_eq!(resolve_plain("~"), Value::Null);
        assert_eq!(resolve_plain("inf"), Value::String("inf".into()));
        assert_eq!(resolve_plain("1.2.3"), Value::String("1.2.3".into()));
        assert_eq!(resolve_plain("e5"), Value::String("e5".into()));
        let n = parse_yaml("f", "x: '12'").unwrap();
        assert_eq!(n.get("x").unwrap().to_value(), Value::String("12".into()));
    }

    #[test]
    fn syntax_error_has_location() {
        let e = parse_yaml("f.yaml", "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.0[0].message.starts_with("YAML syntax error"), "{e}");
        assert!(e.0[0].span.line >= 1);
    }

    #[test]
    fn nested_aliases_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let e = parse_yaml("f", &text).unwrap_err();
        assert!(e.0.iter().any(|d| d.message == "aliases expand to too many nodes"), "{e}");
    }

    #[test]
    fn hostile_texts_are_errors_with_locations() {
        let at = |text: &str| {
            let e = parse_yaml("f.yaml", text).unwrap_err();
            let d = &e.0[0];
            (d.message.clone(), d.span.line, d.span.col)
        };
        let (m, l, c) = at("name: x\nstages:\n  ? [a, b]\n  : {use: counter}\n");
        assert!(m.starts_with("a mapping key must be a plain name, found a list"), "{m}");
        assert_eq!((l, c), (3, 5));
        let (m, l, c) = at("name: x\nstages: {}\n---\nname: y\n");
        assert!(m.contains("second YAML document"), "{m}");
        assert_eq!(l, 3, "{m} at {l}:{c}");
        let (m, l, c) = at("name: x\nseed: 1\x00\nstages: {}\n");
        assert_eq!((m.as_str(), l, c), ("NUL byte in a YAML text", 2, 8));
        // A BOM is skipped: the first key is `name`, at column 1.
        let n = parse_yaml("f", "\u{feff}name: x\n").unwrap();
        let (k, _) = &n.as_map().unwrap()[0];
        assert_eq!((k.as_scalar(), k.span.col), (Some("name"), 1));
        // One document with explicit markers is fine.
        assert!(parse_yaml("f", "---\na: 1\n...\n").is_ok());
        let e = parse_yaml("f", "a: 1\nb:\u{feff} 2\n").unwrap_err();
        assert_eq!((e.0[0].message.as_str(), e.0[0].span.line, e.0[0].span.col), ("byte order mark (U+FEFF) inside a YAML text", 2, 3));
    }

    #[test]
    fn aliases_copy_anchored_nodes() {
        let n = parse_yaml("f", "a: &x {k: 1}\nb: *x\n").unwrap();
        assert_eq!(n.get("b").unwrap().get("k").unwrap().as_scalar(), Some("1"));
    }
}
