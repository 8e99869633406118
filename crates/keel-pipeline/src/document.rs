//! The pipeline document: a parsed pipeline file as a spanned YAML tree, read with size and
//! file-type limits, and edited in place by `--set` overrides, sweep cells and dry runs through
//! one path syntax (`stages.learn.with.beta`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Span};
use crate::yaml::{parse_yaml, Node, NodeKind};

/// Top-level keys of a pipeline file.
pub const TOP_KEYS: &[&str] = &["name", "seed", "description", "resources", "stages", "sweep"];
/// Keys of a stage entry.
pub const STAGE_KEYS: &[&str] = &["use", "with", "inputs", "resources"];

/// A parsed pipeline file with its `--set` overrides applied, not yet validated.
///
/// Overrides edit this spanned tree, so an error in an overridden value points at the `--set`
/// argument rather than at the file.
#[derive(Debug, Clone)]
pub struct PipelineDoc {
    file: Arc<str>,
    path: Option<PathBuf>,
    root: Node,
    overrides: Vec<String>,
}

impl PipelineDoc {
    /// Parses pipeline text; `file` is the name used in diagnostics.
    pub fn parse(file: &str, text: &str) -> Result<Self, Diagnostics> {
        let root = parse_yaml(file, text)?;
        Ok(PipelineDoc { file: Arc::from(file), path: None, root, overrides: Vec::new() })
    }

    /// Reads and parses a pipeline file: a regular file (a FIFO, a device such as `/dev/zero`
    /// or a directory is refused before it is opened, so reading cannot block or run forever)
    /// of at most [`MAX_PIPELINE_BYTES`], in UTF-8.
    pub fn read(path: &Path) -> Result<Self, Diagnostics> {
        let name = path.display().to_string();
        let text = read_pipeline_text(path).map_err(|(msg, help, line, col)| {
            Diagnostic::new(Span::new(name.as_str(), line, col), msg).with_help(help)
        })?;
        let mut doc = Self::parse(&name, &text)?;
        doc.path = Some(path.to_path_buf());
        Ok(doc)
    }

    /// The name used in diagnostics.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The file the document was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The spanned YAML tree.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// Mutable access for sweep expansion (which applies grid values like overrides).
    pub(crate) fn root_mut(&mut self) -> &mut Node {
        &mut self.root
    }

    /// Drops the `sweep:` block (a sweep cell is an ordinary run).
    pub(crate) fn remove_sweep(&mut self) {
        if let NodeKind::Map(entries) = &mut self.root.kind {
            entries.retain(|(k, _)| k.as_scalar() != Some("sweep"));
        }
    }

    /// The overrides applied so far, as given.
    pub fn overrides(&self) -> &[String] {
        &self.overrides
    }

    /// Applies `path=value` (value parsed as YAML), e.g. `stages.learn.with.beta=0.04`.
    ///
    /// Paths are checked against the schema: the top-level key must exist in the schema, a stage
    /// must exist, and under a stage only `use`, `with`, `inputs` and `resources` may be set.
    pub fn apply_override(&mut self, spec: &str) -> Result<(), Diagnostic> {
        self.set_from_text("--set", spec)?;
        self.overrides.push(spec.to_string());
        Ok(())
    }

    /// Sets `path=value` (value parsed as YAML) without recording it as an override; `origin`
    /// (`--set`, `--dry-run`) names where the text came from in diagnostics.
    pub(crate) fn set_from_text(&mut self, origin: &str, spec: &str) -> Result<(), Diagnostic> {
        let file: Arc<str> = Arc::from(format!("{origin} '{spec}'"));
        let Some(eq) = spec.find('=') else {
            return Err(Diagnostic::new(Span::new(file, 1, 1), "override has no `=`")
                .with_help("write overrides as `path=value`, e.g. `stages.learn.with.beta=0.04`"));
        };
        let (path, value_text) = (&spec[..eq], &spec[eq + 1..]);
        let value_col = path.chars().count() + 1;
        let mut value = match parse_yaml(&file, value_text) {
            Ok(v) => v,
            Err(d) => {
                let first = d.0.into_iter().next();
                let msg = first.map(|d| d.message).unwrap_or_else(|| "invalid value".into());
                return Err(Diagnostic::new(Span::new(file, 1, value_col + 1), msg)
                    .with_help("the value is parsed as YAML; quote strings that contain `:` or `#`"));
            }
        };
        value.shift(&file, value_col);
        let segs = split_path(path, &Span::new(file.clone(), 1, 1), false)?;
        set_path(&mut self.root, &segs, value)
    }
}

/// Largest pipeline file read (16 MiB): real pipelines are a few kilobytes, and the spanned tree
/// takes many times the text's size in memory.
pub const MAX_PIPELINE_BYTES: u64 = 16 << 20;

/// The text of a pipeline file, or (message, help, line, column) saying why it cannot be used.
fn read_pipeline_text(path: &Path) -> Result<String, (String, String, usize, usize)> {
    use std::io::Read;
    let io = |what: &str, e: std::io::Error| (format!("cannot {what} pipeline file: {e}"), "check the path and permissions".to_string(), 1, 1);
    // `metadata` follows symbolic links, so a link to a FIFO is refused too.
    let meta = std::fs::metadata(path).map_err(|e| io("read", e))?;
    if let Some(what) = keel_core::non_regular_kind(&meta) {
        return Err((format!("the pipeline file is {what}"), "pass a regular `.yaml` file".into(), 1, 1));
    }
    if meta.len() > MAX_PIPELINE_BYTES {
        return Err((
            format!("the pipeline file is {} bytes, more than the limit of {MAX_PIPELINE_BYTES} (16 MiB)", meta.len()),
            "a pipeline file is a few kilobytes of YAML; check that this is the right file".into(),
            1,
            1,
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| io("open", e))?;
    let mut bytes = Vec::new();
    // `take` bounds the read even if the file grows after the check.
    file.take(MAX_PIPELINE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| io("read", e))?;
    if bytes.len() as u64 > MAX_PIPELINE_BYTES {
        return Err((format!("the pipeline file grew past the limit of {MAX_PIPELINE_BYTES} bytes while being read"), "pass a file that is not being written".into(), 1, 1));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let valid = String::from_utf8_lossy(&e.as_bytes()[..at]).into_owned();
        let (line, col) = crate::yaml::line_col(&valid, at);
        ("the pipeline file is not valid UTF-8".to_string(), format!("save it as UTF-8 text (the first invalid byte is at byte offset {at})"), line, col)
    })
}

/// Applies a `--set` override to a document (see [`PipelineDoc::apply_override`]).
pub fn apply_override(doc: &mut PipelineDoc, spec: &str) -> Result<(), Diagnostic> {
    doc.apply_override(spec)
}

/// Splits `a.b.c` into segments with the span of each; `base` is where the path text starts.
pub(crate) fn split_path(path: &str, base: &Span, quoted: bool) -> Result<Vec<(String, Span)>, Diagnostic> {
    let mut out = Vec::new();
    let mut col = base.col + usize::from(quoted);
    for seg in path.split('.') {
        let span = Span::new(base.file.clone(), base.line, col);
        if seg.is_empty() {
            return Err(Diagnostic::new(span, format!("empty segment in path `{path}`"))
                .with_help("paths look like `stages.learn.with.beta`"));
        }
        out.push((seg.to_string(), span));
        col += seg.chars().count() + 1;
    }
    Ok(out)
}

fn names_of(node: &Node) -> Vec<String> {
    node.as_map()
        .map(|m| m.iter().filter_map(|(k, _)| k.as_scalar().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Sets the value at a schema path inside the tree, creating missing maps below a stage section.
pub(crate) fn set_path(root: &mut Node, segs: &[(String, Span)], value: Node) -> Result<(), Diagnostic> {
    let full: String = segs.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(".");
    let Some(((top, top_span), rest)) = segs.split_first() else {
        return Err(Diagnostic::new(value.span.clone(), "empty override path"));
    };
    if !TOP_KEYS.contains(&top.as_str()) {
        return Err(Diagnostic::new(top_span.clone(), format!("unknown top-level key `{top}` in path `{full}`"))
            .with_help(did_you_mean(top, TOP_KEYS, "top-level keys")));
    }
    match top.as_str() {
        "name" | "seed" | "description" if !rest.is_empty() => {
            return Err(Diagnostic::new(rest[0].1.clone(), format!("`{top}` is a single value; `{full}` goes inside it"))
                .with_help(format!("set `{top}=...` directly")));
        }
        "stages" => {
            if rest.len() < 2 {
                return Err(Diagnostic::new(top_span.clone(), format!("path `{full}` must name a stage and a field"))
                    .with_help("write `stages.<stage>.with.<param>=value` (or `.use`, `.inputs.<port>`, `.resources.<role>`)"));
            }
            let (stage, stage_span) = &rest[0];
            let stages = root.get("stages").map(names_of).unwrap_or_default();
            if !stages.contains(stage) {
                return Err(Diagnostic::new(stage_span.clone(), format!("unknown stage `{stage}` in path `{full}`"))
                    .with_help(did_you_mean(stage, &stages, "stages")));
            }
            let (field, field_span) = &rest[1];
            if !STAGE_KEYS.contains(&field.as_str()) {
                return Err(Diagnostic::new(field_span.clone(), format!("unknown stage field `{field}` in path `{full}`"))
                    .with_help(did_you_mean(field, STAGE_KEYS, "stage fields")));
            }
            if field == "use" && rest.len() > 2 {
                return Err(Diagnostic::new(rest[2].1.clone(), format!("`use` is a single value; `{full}` goes inside it"))
                    .with_help(format!("set `stages.{stage}.use=<kind>` directly")));
            }
        }
        _ => {}
    }
    let mut node = root;
    let mut walked = String::new();
    for (i, (seg, span)) in segs.iter().enumerate() {
        if node.is_null() {
            node.kind = NodeKind::Map(Vec::new());
        }
        let shape = node.shape();
        let NodeKind::Map(entries) = &mut node.kind else {
            return Err(Diagnostic::new(span.clone(), format!("cannot set `{seg}` inside `{walked}`, which is a {shape}"))
                .with_help(format!("`{walked}` holds a single value; set it directly")));
        };
        let pos = entries.iter().position(|(k, _)| k.as_scalar() == Some(seg.as_str()));
        if i + 1 == segs.len() {
            match pos {
                Some(p) => entries[p].1 = value,
                None => entries.push((Node::scalar(seg.clone(), span.clone()), value)),
            }
            return Ok(());
        }
        let p = match pos {
            Some(p) => p,
            None => {
                entries.push((Node::scalar(seg.clone(), span.clone()), Node::empty_map(span.clone())));
                entries.len() - 1
            }
        };
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(seg);
        node = &mut entries[p].1;
    }
    Ok(())
}

