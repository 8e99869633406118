//! Pipeline files: parsing, `--set` overrides, and validation into a runnable [`Pipeline`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Span};
use crate::params::{value_kind, Params};
use crate::registry::{Registry, StageKind};
use crate::sweep::CellInfo;
use crate::yaml::{parse_yaml, yaml_to_json, Node, NodeKind};

/// Top-level keys of a pipeline file.
pub const TOP_KEYS: &[&str] = &["name", "seed", "description", "resources", "stages", "sweep"];
/// Keys of a stage entry.
pub const STAGE_KEYS: &[&str] = &["use", "with", "inputs", "resources"];
/// Keys of a resource entry.
pub const RESOURCE_KEYS: &[&str] = &["kind", "max_staleness"];
/// Resource kinds the engine provides.
pub const RESOURCE_KINDS: &[&str] = &["policy_store"];
/// Keys of the `sweep:` block.
pub const SWEEP_KEYS: &[&str] = &["grid", "seeds"];

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

    /// Reads and parses a pipeline file.
    pub fn read(path: &Path) -> Result<Self, Diagnostics> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostic::new(Span::new(name.as_str(), 1, 1), format!("cannot read pipeline file: {e}"))
                .with_help("check the path and permissions")
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
    fn set_from_text(&mut self, origin: &str, spec: &str) -> Result<(), Diagnostic> {
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

/// A declared shared resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDecl {
    /// Name under `resources:`.
    pub name: String,
    /// Resource kind (`policy_store`).
    pub kind: String,
    /// Maximum staleness of a policy store (0 = fully synchronous).
    pub max_staleness: u64,
}

/// An output port of a stage, as named in `inputs:` (`"stage.port"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRef {
    /// Producing stage.
    pub stage: String,
    /// Its output port.
    pub port: String,
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.stage, self.port)
    }
}

/// One validated stage: its kind, resolved parameters and wiring.
#[derive(Clone)]
pub struct StageInstance {
    /// The stage name (the key under `stages:`).
    pub name: String,
    /// Its kind.
    pub kind: Arc<dyn StageKind>,
    /// Parameters with defaults filled in.
    pub params: Params,
    /// Input port to its sources (several sources merge).
    pub inputs: BTreeMap<String, Vec<PortRef>>,
    /// Resource role to resource name.
    pub resources: BTreeMap<String, String>,
    /// Where the stage is defined.
    pub span: Span,
}

impl std::fmt::Debug for StageInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageInstance")
            .field("name", &self.name)
            .field("kind", &self.kind.name())
            .field("params", &self.params)
            .field("inputs", &self.inputs)
            .field("resources", &self.resources)
            .finish()
    }
}

/// The `sweep:` block: grid paths with their values, and seeds.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// Override path (`stages.X.with.Y`) to its candidate values, in file order.
    pub grid: Vec<(String, Span, Vec<Node>)>,
    /// Seeds to repeat every grid point with (the pipeline's `seed` if none are listed).
    pub seeds: Vec<u64>,
}

/// A validated pipeline, ready to run.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// `name:`; also the directory under `runs/`.
    pub name: String,
    /// Root seed.
    pub seed: u64,
    /// `description:`.
    pub description: Option<String>,
    /// Declared resources.
    pub resources: Vec<ResourceDecl>,
    /// Stages in file order.
    pub stages: Vec<StageInstance>,
    /// The sweep block, if any.
    pub sweep: Option<SweepSpec>,
    /// The document it was validated from (with overrides applied).
    pub doc: PipelineDoc,
    /// Set when this pipeline is one cell of a sweep.
    pub cell: Option<CellInfo>,
    /// Set when this pipeline is the shrunk version of another for a dry run (see [`dry_run`]).
    pub dry_run: Option<DryRunInfo>,
}

/// What a dry run changed, recorded in `manifest.json` so that a dry run is never mistaken for a
/// real result.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DryRunInfo {
    /// Every change made to the pipeline, as `path=value` in `--set` syntax.
    pub changes: Vec<String>,
    /// What the stage kinds want the user to know (e.g. a dataset missing from the cache).
    pub notes: Vec<String>,
}

impl Pipeline {
    /// The stage with this name.
    pub fn stage(&self, name: &str) -> Option<&StageInstance> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The resolved configuration (defaults filled, inputs as lists, no sweep block) as JSON; this
    /// is what `manifest.json` records and what the config hash covers.
    pub fn resolved_config(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut resources = Map::new();
        for r in &self.resources {
            resources.insert(r.name.clone(), json!({"kind": r.kind, "max_staleness": r.max_staleness}));
        }
        let mut stages = Map::new();
        for s in &self.stages {
            let with: Map<String, Value> =
                s.params.values().iter().map(|(k, v)| (k.clone(), yaml_to_json(v))).collect();
            let inputs: Map<String, Value> = s
                .inputs
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.iter().map(|p| p.to_string()).collect::<Vec<_>>())))
                .collect();
            let res: Map<String, Value> =
                s.resources.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
            stages.insert(
                s.name.clone(),
                json!({"use": s.kind.name(), "with": with, "inputs": inputs, "resources": res}),
            );
        }
        let mut config = json!({
            "name": self.name,
            "seed": self.seed,
            "description": self.description,
            "resources": resources,
            "stages": stages,
        });
        // Only dry runs carry the key, so the hashes of real configurations are unchanged and a
        // dry run never shares a hash with a real run, even when it changed no parameter.
        if self.dry_run.is_some() {
            config["dry_run"] = Value::Bool(true);
        }
        config
    }

    /// sha256 of the canonical (sorted-key, compact) JSON of [`Pipeline::resolved_config`].
    pub fn config_hash(&self) -> String {
        keel_core::sha256_bytes(canonical_json(&self.resolved_config()).as_bytes())
    }
}

/// Compact JSON with object keys sorted at every level, independent of serde_json features.
pub fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    let key = serde_json::to_string(k).unwrap_or_default();
                    format!("{key}:{}", canonical_json(&m[k]))
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

struct Validator {
    diags: Vec<Diagnostic>,
}

impl Validator {
    fn err(&mut self, span: &Span, msg: impl Into<String>, help: impl Into<String>) {
        self.diags.push(Diagnostic::new(span.clone(), msg).with_help(help));
    }

    fn check_keys(&mut self, node: &Node, allowed: &[&str], what: &str) {
        for (k, _) in node.as_map().unwrap_or_default() {
            match k.as_scalar() {
                Some(name) if allowed.contains(&name) => {}
                Some(name) => {
                    let help = did_you_mean(name, allowed, "keys");
                    self.err(&k.span, format!("unknown key `{name}` in {what}"), help);
                }
                None => self.err(&k.span, format!("keys in {what} must be plain names"), "use a name such as `stages`"),
            }
        }
    }

    /// A string scalar, or a diagnostic.
    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.to_value() {
            serde_yaml::Value::String(s) => Some(s),
            other => {
                let kind = value_kind(&other);
                self.err(&node.span, format!("{what} must be a string, found {kind}"), "quote the value if it is meant as text");
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, what: &str) -> Option<u64> {
        let v = node.to_value();
        match v.as_u64() {
            Some(u) => Some(u),
            None => {
                let kind = value_kind(&v);
                self.err(&node.span, format!("{what} must be a non-negative integer, found {kind}"), "write an integer such as `42`");
                None
            }
        }
    }

    fn map<'n>(&mut self, node: &'n Node, what: &str, example: &str) -> &'n [(Node, Node)] {
        if node.is_null() {
            return &[];
        }
        match node.as_map() {
            Some(m) => m,
            None => {
                let shape = node.shape();
                self.err(&node.span, format!("{what} must be a mapping, found a {shape}"), format!("write it as {example}"));
                &[]
            }
        }
    }
}

struct StageDraft<'n> {
    name: String,
    name_span: Span,
    body: &'n Node,
    kind: Option<Arc<dyn StageKind>>,
}

/// Validates a document against a registry, collecting every problem.
pub fn validate(doc: &PipelineDoc, registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let mut v = Validator { diags: Vec::new() };
    let root = doc.root();
    if root.as_map().is_none() {
        let shape = root.shape();
        v.err(
            &root.span,
            format!("a pipeline file must be a mapping, found a {shape}"),
            "start with `name: <pipeline>`, `seed: <int>` and `stages:`",
        );
        return Err(Diagnostics(v.diags));
    }
    v.check_keys(root, TOP_KEYS, "the pipeline file");

    let name = match root.get("name") {
        None => {
            v.err(&root.span, "missing `name`", "add `name: <pipeline-name>` at the top of the file");
            None
        }
        Some(n) => v.string(n, "`name`").filter(|s| {
            let ok = valid_ident(s);
            if !ok {
                v.err(&n.span, format!("invalid pipeline name `{s}`"), "use letters, digits, `_` and `-` only (it becomes a directory name)");
            }
            ok
        }),
    };
    let seed = match root.get("seed") {
        None => {
            v.err(&root.span, "missing `seed`", "add `seed: <int>` so runs are reproducible");
            None
        }
        Some(n) => v.uint(n, "`seed`"),
    };
    let description = root.get("description").filter(|n| !n.is_null()).and_then(|n| v.string(n, "`description`"));

    // Resources.
    let mut resources = Vec::new();
    if let Some(rnode) = root.get("resources") {
        for (k, body) in v.map(rnode, "`resources`", "`resources: {policy: {kind: policy_store, max_staleness: 1}}`") {
            let Some(rname) = k.as_scalar().map(str::to_string) else { continue };
            if !valid_ident(&rname) {
                v.err(&k.span, format!("invalid resource name `{rname}`"), "use letters, digits, `_` and `-` only");
            }
            if body.as_map().is_none() {
                v.err(&body.span, format!("resource `{rname}` must be a mapping"), "write `{kind: policy_store, max_staleness: 0}`");
                continue;
            }
            v.check_keys(body, RESOURCE_KEYS, &format!("resource `{rname}`"));
            let kind = match body.get("kind") {
                None => {
                    v.err(&k.span, format!("resource `{rname}` has no `kind`"), "add `kind: policy_store`");
                    None
                }
                Some(kn) => v.string(kn, "resource `kind`").filter(|kind| {
                    let ok = RESOURCE_KINDS.contains(&kind.as_str());
                    if !ok {
                        v.err(&kn.span, format!("unknown resource kind `{kind}`"), did_you_mean(kind, RESOURCE_KINDS, "resource kinds"));
                    }
                    ok
                }),
            };
            let max_staleness = match body.get("max_staleness") {
                None => Some(0),
                Some(n) => v.uint(n, "`max_staleness`"),
            };
            if let (Some(kind), Some(max_staleness)) = (kind, max_staleness) {
                resources.push(ResourceDecl { name: rname, kind, max_staleness });
            }
        }
    }
    let resource_names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();

    // Stages, pass 1: names and kinds.
    let mut drafts: Vec<StageDraft> = Vec::new();
    match root.get("stages") {
        None => v.err(&root.span, "missing `stages`", "add a `stages:` mapping from stage name to `{use: KIND, ...}`"),
        Some(snode) => {
            let entries = v.map(snode, "`stages`", "`stages: {name: {use: KIND}}`");
            if entries.is_empty() && snode.as_map().is_some() || snode.is_null() {
                v.err(&snode.span, "the pipeline has no stages", "add at least one stage under `stages:`");
            }
            for (k, body) in entries {
                let Some(sname) = k.as_scalar().map(str::to_string) else { continue };
                if !valid_ident(&sname) {
                    v.err(&k.span, format!("invalid stage name `{sname}`"), "use letters, digits, `_` and `-` only (no `.`: inputs refer to `stage.port`)");
                }
                if body.as_map().is_none() {
                    let shape = body.shape();
                    v.err(&body.span, format!("stage `{sname}` must be a mapping, found a {shape}"), "write `{use: KIND, with: {...}, inputs: {...}}`");
                    continue;
                }
                v.check_keys(body, STAGE_KEYS, &format!("stage `{sname}`"));
                let kind = match body.get("use") {
                    None => {
                        v.err(&k.span, format!("stage `{sname}` has no `use`"), "add `use: <kind>`; `keel list` shows the kinds");
                        None
                    }
                    Some(u) => match v.string(u, "`use`") {
                        None => None,
                        Some(kname) => match registry.get(&kname) {
                            Some(kind) => Some(kind.clone()),
                            None => {
                                let help = did_you_mean(&kname, registry.names(), "stage kinds");
                                v.err(&u.span, format!("unknown stage kind `{kname}` for stage `{sname}`"), help);
                                None
                            }
                        },
                    },
                };
                drafts.push(StageDraft { name: sname, name_span: k.span.clone(), body, kind });
            }
        }
    }
    let stage_names: Vec<String> = drafts.iter().map(|d| d.name.clone()).collect();
    let kinds_by_name: HashMap<&str, &Arc<dyn StageKind>> =
        drafts.iter().filter_map(|d| d.kind.as_ref().map(|k| (d.name.as_str(), k))).collect();

    // Stages, pass 2: params, inputs, resources.
    let mut stages = Vec::new();
    let mut edges: Vec<(String, String, Span)> = Vec::new(); // producer, consumer, where
    for d in &drafts {
        let Some(kind) = &d.kind else { continue };
        let params = validate_params(&mut v, d, kind);
        let inputs = validate_inputs(&mut v, d, kind, &stage_names, &kinds_by_name, &mut edges);
        let res = validate_resources(&mut v, d, kind, &resources, &resource_names);
        if let (Some(params), Some(inputs), Some(res)) = (params, inputs, res) {
            stages.push(StageInstance {
                name: d.name.clone(),
                kind: kind.clone(),
                params,
                inputs,
                resources: res,
                span: d.name_span.clone(),
            });
        }
    }

    check_cycles(&mut v, &stage_names, &edges);
    let sweep = root.get("sweep").and_then(|s| validate_sweep(&mut v, doc, s));

    if !v.diags.is_empty() {
        return Err(Diagnostics(v.diags).sorted());
    }
    let pipeline = match (name, seed) {
        (Some(name), Some(seed)) => Pipeline {
            name,
            seed,
            description,
            resources,
            stages,
            sweep,
            doc: doc.clone(),
            cell: None,
            dry_run: None,
        },
        _ => return Err(Diagnostics(vec![Diagnostic::new(root.span.clone(), "pipeline is incomplete")])),
    };
    // Every sweep cell must validate too, so that no cell fails after others have run.
    if pipeline.sweep.is_some() {
        crate::sweep::expand_sweep(&pipeline, registry)?;
    }
    Ok(pipeline)
}

fn validate_params(v: &mut Validator, d: &StageDraft, kind: &Arc<dyn StageKind>) -> Option<Params> {
    let specs = kind.params();
    let kname = kind.name();
    let before = v.diags.len();
    let mut values = BTreeMap::new();
    let mut spans = Vec::new();
    let with = d.body.get("with");
    let with_span = d.body.as_map().and_then(|m| {
        m.iter().find(|(k, _)| k.as_scalar() == Some("with")).map(|(k, _)| k.span.clone())
    });
    if let Some(w) = with {
        for (k, val) in v.map(w, &format!("`with` of stage `{}`", d.name), "`with: {param: value}`") {
            let Some(pname) = k.as_scalar() else { continue };
            match specs.iter().find(|s| s.name == pname) {
                None => {
                    let help = if specs.is_empty() {
                        format!("kind `{kname}` takes no parameters")
                    } else {
                        did_you_mean(pname, specs.iter().map(|s| s.name), "parameters")
                    };
                    v.err(&k.span, format!("unknown parameter `{pname}` for stage `{}` (kind `{kname}`)", d.name), help);
                }
                Some(spec) => {
                    let value = val.to_value();
                    let null_ok = value.is_null() && spec.default_value().is_some_and(|dv| dv.is_null());
                    if let (false, Err(e)) = (null_ok, spec.ty.check(&value)) {
                        v.err(
                            &val.span,
                            format!("parameter `{pname}` of stage `{}` (kind `{kname}`): {e}", d.name),
                            format!("`{pname}` takes a {}: {}", spec.ty, spec.doc),
                        );
                    }
                    values.insert(pname.to_string(), value);
                    spans.push((pname.to_string(), val.span.clone()));
                }
            }
        }
    }
    for spec in &specs {
        if values.contains_key(spec.name) {
            continue;
        }
        match (spec.default, spec.default_value()) {
            (None, _) => {
                let at = with_span.clone().unwrap_or_else(|| d.name_span.clone());
                v.err(
                    &at,
                    format!("missing required parameter `{}` for stage `{}` (kind `{kname}`)", spec.name, d.name),
                    format!("add `{}: <{}>` under `with:` ({})", spec.name, spec.ty, spec.doc),
                );
            }
            (Some(text), None) => v.err(
                &d.name_span,
                format!("stage kind `{kname}` declares an invalid default `{text}` for `{}`", spec.name),
                "this is a bug in the stage kind; set the parameter explicitly to work around it",
            ),
            (Some(_), Some(dv)) => {
                values.insert(spec.name.to_string(), dv);
            }
        }
    }
    if v.diags.len() > before {
        return None;
    }
    let mut params = Params::new(d.name.clone(), values);
    for (n, s) in spans {
        params.set_span(&n, s);
    }
    let use_span = d.body.get("use").map(|u| u.span.clone()).unwrap_or_else(|| d.name_span.clone());
    let problems = kind.check(&params);
    let ok = problems.is_empty();
    for p in problems {
        let at = params.span(&p.param).cloned().unwrap_or_else(|| use_span.clone());
        let label = if p.param.is_empty() { String::new() } else { format!("parameter `{}` of ", p.param) };
        let diag = Diagnostic::new(at, format!("{label}stage `{}` (kind `{kname}`): {}", d.name, p.message))
            .with_help_opt(p.help);
        v.diags.push(diag);
    }
    ok.then_some(params)
}

fn source_nodes<'n>(v: &mut Validator, node: &'n Node, what: &str) -> Vec<&'n Node> {
    match &node.kind {
        NodeKind::Scalar { .. } if !node.is_null() => vec![node],
        NodeKind::Seq(items) => items.iter().collect(),
        _ => {
            v.err(&node.span, format!("{what} must be `\"stage.port\"` or a list of them"), "write e.g. `in: \"prompts.out\"` or `in: [a.out, b.out]`");
            vec![]
        }
    }
}

fn validate_inputs(
    v: &mut Validator,
    d: &StageDraft,
    kind: &Arc<dyn StageKind>,
    stage_names: &[String],
    kinds: &HashMap<&str, &Arc<dyn StageKind>>,
    edges: &mut Vec<(String, String, Span)>,
) -> Option<BTreeMap<String, Vec<PortRef>>> {
    let before = v.diags.len();
    let kname = kind.name();
    let specs = kind.inputs();
    let mut out: BTreeMap<String, Vec<PortRef>> = BTreeMap::new();
    if let Some(inode) = d.body.get("inputs") {
        for (k, src) in v.map(inode, &format!("`inputs` of stage `{}`", d.name), "`inputs: {port: \"stage.port\"}`") {
            let Some(port) = k.as_scalar() else { continue };
            let spec = specs.iter().find(|s| s.name == port);
            if spec.is_none() {
                let help = if specs.is_empty() {
                    format!("kind `{kname}` has no inputs")
                } else {
                    did_you_mean(port, specs.iter().map(|s| s.name), "input ports")
                };
                v.err(&k.span, format!("unknown input port `{port}` for stage `{}` (kind `{kname}`)", d.name), help);
            }
            let mut refs = Vec::new();
            for s in source_nodes(v, src, &format!("input `{port}`")) {
                let text = s.as_scalar().unwrap_or_default();
                let Some((sstage, sport)) = text.split_once('.').filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('.')) else {
                    v.err(&s.span, format!("input `{port}` of stage `{}` must name `stage.port`, found `{text}`", d.name), "write the producing stage and its output port, e.g. `prompts.out`");
                    continue;
                };
                if !stage_names.iter().any(|n| n == sstage) {
                    let help = did_you_mean(sstage, stage_names, "stages");
                    v.err(&s.span, format!("input `{port}` of stage `{}` refers to unknown stage `{sstage}`", d.name), help);
                    continue;
                }
                edges.push((sstage.to_string(), d.name.clone(), s.span.clone()));
                let Some(skind) = kinds.get(sstage) else { continue };
                let outs = skind.outputs();
                let Some(ospec) = outs.iter().find(|o| o.name == sport) else {
                    let help = if outs.is_empty() {
                        format!("stage `{sstage}` (kind `{}`) has no outputs", skind.name())
                    } else {
                        did_you_mean(sport, outs.iter().map(|o| o.name), "output ports")
                    };
                    v.err(&s.span, format!("stage `{sstage}` (kind `{}`) has no output port `{sport}`", skind.name()), help);
                    continue;
                };
                if let Some(spec) = spec {
                    if spec.ty != "*" && spec.ty != ospec.ty {
                        let candidates: Vec<String> = kinds
                            .iter()
                            .flat_map(|(n, k)| {
                                k.outputs().into_iter().filter(|o| o.ty == spec.ty).map(move |o| format!("`{n}.{}`", o.name))
                            })
                            .collect();
                        let mut candidates = candidates;
                        candidates.sort();
                        let help = if candidates.is_empty() {
                            format!("connect an output of type `{}`", spec.ty)
                        } else {
                            format!("connect an output of type `{}`, e.g. {}", spec.ty, candidates.join(", "))
                        };
                        v.err(
                            &s.span,
                            format!(
                                "port type mismatch: input `{}.{port}` takes `{}` but `{sstage}.{sport}` produces `{}`",
                                d.name, spec.ty, ospec.ty
                            ),
                            help,
                        );
                        continue;
                    }
                }
                refs.push(PortRef { stage: sstage.to_string(), port: sport.to_string() });
            }
            out.entry(port.to_string()).or_default().extend(refs);
        }
    }
    for spec in specs.iter().filter(|s| s.required) {
        if out.get(spec.name).is_none_or(|sources| sources.is_empty()) && v.diags.len() == before {
            v.err(
                &d.name_span,
                format!("missing required input `{}` for stage `{}` (kind `{kname}`)", spec.name, d.name),
                format!("add `inputs: {{{}: \"<stage>.<port>\"}}` naming an output of type `{}`", spec.name, spec.ty),
            );
        }
    }
    (v.diags.len() == before).then_some(out)
}

fn validate_resources(
    v: &mut Validator,
    d: &StageDraft,
    kind: &Arc<dyn StageKind>,
    resources: &[ResourceDecl],
    names: &[String],
) -> Option<BTreeMap<String, String>> {
    let before = v.diags.len();
    let kname = kind.name();
    let specs = kind.resources();
    let mut out = BTreeMap::new();
    if let Some(rnode) = d.body.get("resources") {
        for (k, val) in v.map(rnode, &format!("`resources` of stage `{}`", d.name), "`resources: {role: resource_name}`") {
            let Some(role) = k.as_scalar() else { continue };
            let Some(spec) = specs.iter().find(|s| s.role == role) else {
                let help = if specs.is_empty() {
                    format!("kind `{kname}` uses no resources")
                } else {
                    did_you_mean(role, specs.iter().map(|s| s.role), "resource roles")
                };
                v.err(&k.span, format!("unknown resource role `{role}` for stage `{}` (kind `{kname}`)", d.name), help);
                continue;
            };
            let Some(rname) = v.string(val, "a resource name") else { continue };
            match resources.iter().find(|r| r.name == rname) {
                None => {
                    let help = if names.is_empty() {
                        format!("declare it at the top level: `resources: {{{rname}: {{kind: {}}}}}`", spec.kind)
                    } else {
                        did_you_mean(&rname, names, "resources")
                    };
                    v.err(&val.span, format!("unknown resource `{rname}` for role `{role}` of stage `{}`", d.name), help);
                }
                Some(r) if r.kind != spec.kind => v.err(
                    &val.span,
                    format!("resource `{rname}` is a `{}` but role `{role}` of stage `{}` needs a `{}`", r.kind, d.name, spec.kind),
                    format!("bind a `{}` resource", spec.kind),
                ),
                Some(_) => {
                    out.insert(role.to_string(), rname);
                }
            }
        }
    }
    for spec in specs.iter().filter(|s| s.required) {
        if !out.contains_key(spec.role) && v.diags.len() == before {
            v.err(
                &d.name_span,
                format!("missing required resource `{}` for stage `{}` (kind `{kname}`)", spec.role, d.name),
                format!("add `resources: {{{}: <name>}}` naming a `{}` resource", spec.role, spec.kind),
            );
        }
    }
    (v.diags.len() == before).then_some(out)
}

fn check_cycles(v: &mut Validator, names: &[String], edges: &[(String, String, Span)]) {
    let idx: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut adj: Vec<Vec<(usize, &Span)>> = vec![Vec::new(); names.len()];
    for (from, to, span) in edges {
        if let (Some(&a), Some(&b)) = (idx.get(from.as_str()), idx.get(to.as_str())) {
            adj[a].push((b, span));
        }
    }
    // Iterative DFS with colours: 0 unvisited, 1 on stack, 2 done.
    let mut colour = vec![0u8; names.len()];
    let mut reported: HashSet<Vec<usize>> = HashSet::new();
    for start in 0..names.len() {
        if colour[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if *next < adj[node].len() {
                let (to, span) = adj[node][*next];
                *next += 1;
                match colour[to] {
                    0 => {
                        colour[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let pos = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let mut cyc: Vec<usize> = stack[pos..].iter().map(|(n, _)| *n).collect();
                        let mut key = cyc.clone();
                        key.sort_unstable();
                        if reported.insert(key) {
                            cyc.push(to);
                            let path: Vec<&str> = cyc.iter().map(|&i| names[i].as_str()).collect();
                            v.err(
                                span,
                                format!("cycle in the stage graph: {}", path.join(" -> ")),
                                "ports must form a DAG; feed results back (e.g. new policy weights) through a `policy_store` resource instead of an input",
                            );
                        }
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
}

fn validate_sweep(v: &mut Validator, doc: &PipelineDoc, node: &Node) -> Option<SweepSpec> {
    if node.is_null() {
        return None;
    }
    if node.as_map().is_none() {
        v.err(&node.span, "`sweep` must be a mapping", "write `sweep: {grid: {\"stages.X.with.Y\": [values]}, seeds: [1, 2, 3]}`");
        return None;
    }
    v.check_keys(node, SWEEP_KEYS, "`sweep`");
    let before = v.diags.len();
    let mut grid = Vec::new();
    if let Some(g) = node.get("grid") {
        for (k, vals) in v.map(g, "`sweep.grid`", "`grid: {\"stages.X.with.Y\": [1, 2]}`") {
            let Some(path) = k.as_scalar() else { continue };
            let quoted = matches!(k.kind, NodeKind::Scalar { plain: false, .. });
            let segs = match split_path(path, &k.span, quoted) {
                Ok(s) => s,
                Err(d) => {
                    v.diags.push(d);
                    continue;
                }
            };
            if matches!(segs[0].0.as_str(), "seed" | "name" | "sweep") {
                v.err(&k.span, format!("`{path}` cannot be swept"), "sweep seeds with `sweep.seeds`; the name and sweep block are fixed");
                continue;
            }
            let NodeKind::Seq(items) = &vals.kind else {
                v.err(&vals.span, format!("sweep values for `{path}` must be a list"), format!("write `\"{path}\": [a, b]`"));
                continue;
            };
            if items.is_empty() {
                v.err(&vals.span, format!("sweep values for `{path}` are empty"), "list at least one value");
                continue;
            }
            let mut probe = doc.root().clone();
            if let Err(d) = set_path(&mut probe, &segs, items[0].clone()) {
                v.diags.push(d);
                continue;
            }
            grid.push((path.to_string(), k.span.clone(), items.clone()));
        }
    }
    let mut seeds = Vec::new();
    if let Some(s) = node.get("seeds") {
        match &s.kind {
            NodeKind::Seq(items) if !items.is_empty() => {
                for it in items {
                    if let Some(u) = v.uint(it, "a sweep seed") {
                        if seeds.contains(&u) {
                            v.err(&it.span, format!("seed {u} is listed twice"), "list each seed once");
                        }
                        seeds.push(u);
                    }
                }
            }
            _ => v.err(&s.span, "`sweep.seeds` must be a non-empty list of integers", "write `seeds: [1, 2, 3]`"),
        }
    }
    if seeds.is_empty() {
        if let Some(u) = doc.root().get("seed").and_then(|n| n.to_value().as_u64()) {
            seeds.push(u);
        }
    }
    (v.diags.len() == before).then_some(SweepSpec { grid, seeds })
}

/// The dry-run version of a validated pipeline: every stage's kind says how it shrinks
/// ([`StageKind::dry_run`](crate::StageKind::dry_run): fewer steps, fewer items, a stand-in kind),
/// the changes are applied to the document like `--set` overrides (but recorded separately, in
/// [`Pipeline::dry_run`]), the `sweep:` block is dropped (a dry run runs the base configuration),
/// and the result is validated like any pipeline. Problems are reported at the stage's parameter.
pub fn dry_run(p: &Pipeline, registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let mut doc = p.doc.clone();
    doc.remove_sweep();
    let mut diags = Vec::new();
    let mut info = DryRunInfo::default();
    for s in &p.stages {
        let plan = match s.kind.dry_run(&s.params) {
            Ok(plan) => plan,
            Err(prob) => {
                let at = s.params.span(&prob.param).cloned().unwrap_or_else(|| s.span.clone());
                let label = if prob.param.is_empty() { String::new() } else { format!("parameter `{}` of ", prob.param) };
                diags.push(
                    Diagnostic::new(at, format!("{label}stage `{}` (kind `{}`) cannot be dry-run: {}", s.name, s.kind.name(), prob.message))
                        .with_help_opt(prob.help),
                );
                continue;
            }
        };
        let mut changes: Vec<(String, serde_json::Value)> = Vec::new();
        if let Some(kind) = plan.kind {
            changes.push((format!("stages.{}.use", s.name), serde_json::Value::from(kind)));
            let with: serde_json::Map<String, serde_json::Value> =
                plan.set.iter().map(|(k, v)| (k.clone(), yaml_to_json(v))).collect();
            changes.push((format!("stages.{}.with", s.name), serde_json::Value::Object(with)));
        } else {
            for (k, v) in &plan.set {
                if s.params.value(k) != Some(v) {
                    changes.push((format!("stages.{}.with.{k}", s.name), yaml_to_json(v)));
                }
            }
        }
        for (path, value) in changes {
            let spec = format!("{path}={}", serde_json::to_string(&value).unwrap_or_default());
            match doc.set_from_text("--dry-run", &spec) {
                Ok(()) => info.changes.push(spec),
                Err(d) => diags.push(d),
            }
        }
        info.notes.extend(plan.notes.into_iter().map(|n| format!("stage `{}`: {n}", s.name)));
    }
    if !diags.is_empty() {
        return Err(Diagnostics(diags).sorted());
    }
    let mut out = validate(&doc, registry)?;
    out.dry_run = Some(info);
    Ok(out)
}

/// Reads a pipeline file, applies overrides and validates, reporting all problems together.
pub fn load(path: &Path, overrides: &[String], registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let doc = PipelineDoc::read(path)?;
    finish_load(doc, overrides, registry)
}

/// Like [`load`] for text already in memory; `file` names it in diagnostics.
pub fn load_str(file: &str, text: &str, overrides: &[String], registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let doc = PipelineDoc::parse(file, text)?;
    finish_load(doc, overrides, registry)
}

fn finish_load(mut doc: PipelineDoc, overrides: &[String], registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let mut diags = Vec::new();
    for o in overrides {
        if let Err(d) = doc.apply_override(o) {
            diags.push(d);
        }
    }
    match validate(&doc, registry) {
        Ok(p) if diags.is_empty() => Ok(p),
        Ok(_) => Err(Diagnostics(diags)),
        Err(e) => {
            diags.extend(e.0);
            Err(Diagnostics(diags).sorted())
        }
    }
}
