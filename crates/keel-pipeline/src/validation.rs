//! Validation: checks a pipeline document against the registry's stage kinds, collecting every
//! problem with its file, line and column before any work starts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Span};
use crate::document::{set_path, split_path, PipelineDoc, STAGE_KEYS, TOP_KEYS};
use crate::params::{value_kind, Params};
use crate::registry::{Registry, StageKind};
use crate::validated::{Pipeline, PortRef, ResourceDecl, StageInstance, SweepSpec, DEFAULT_MAX_SWEEP_CELLS, RESOURCE_KINDS};
use crate::yaml::{Node, NodeKind};

/// Keys of a resource entry.
pub const RESOURCE_KEYS: &[&str] = &["kind", "max_staleness"];
/// Keys of the `sweep:` block.
pub const SWEEP_KEYS: &[&str] = &["grid", "seeds", "max_cells"];

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

/// Validates a document against a registry, collecting every problem, without expanding its
/// sweep (see [`crate::validate`], which also validates every sweep cell).
pub(crate) fn validate_document(doc: &PipelineDoc, registry: &Registry) -> Result<Pipeline, Diagnostics> {
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
    let (name, seed, description) = validate_header(&mut v, root);
    let resources = validate_resource_decls(&mut v, root);
    let drafts = stage_drafts(&mut v, root, registry);
    let stage_names: Vec<String> = drafts.iter().map(|d| d.name.clone()).collect();
    let (stages, edges) = validate_stages(&mut v, &drafts, &resources);
    check_cycles(&mut v, &stage_names, &edges);
    let sweep = root
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_scalar() == Some("sweep")))
        .and_then(|(k, s)| validate_sweep(&mut v, doc, &k.span, s));

    if !v.diags.is_empty() {
        return Err(Diagnostics(v.diags).sorted());
    }
    match (name, seed) {
        (Some(name), Some(seed)) => Ok(Pipeline {
            name,
            seed,
            description,
            resources,
            stages,
            sweep,
            doc: doc.clone(),
            cell: None,
            dry_run: None,
        }),
        _ => Err(Diagnostics(vec![Diagnostic::new(root.span.clone(), "pipeline is incomplete")])),
    }
}

/// `name`, `seed` and `description` of the pipeline file.
fn validate_header(v: &mut Validator, root: &Node) -> (Option<String>, Option<u64>, Option<String>) {
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
    (name, seed, description)
}

/// The top-level `resources:` declarations.
fn validate_resource_decls(v: &mut Validator, root: &Node) -> Vec<ResourceDecl> {
    let mut resources = Vec::new();
    let Some(rnode) = root.get("resources") else { return resources };
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
    resources
}

/// Stages, pass 1: each entry under `stages:` with its name and kind.
fn stage_drafts<'n>(v: &mut Validator, root: &'n Node, registry: &Registry) -> Vec<StageDraft<'n>> {
    let mut drafts = Vec::new();
    let Some(snode) = root.get("stages") else {
        v.err(&root.span, "missing `stages`", "add a `stages:` mapping from stage name to `{use: KIND, ...}`");
        return drafts;
    };
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
            Some(u) => v.string(u, "`use`").and_then(|kname| match registry.get(&kname) {
                Some(kind) => Some(kind.clone()),
                None => {
                    let help = did_you_mean(&kname, registry.names(), "stage kinds");
                    v.err(&u.span, format!("unknown stage kind `{kname}` for stage `{sname}`"), help);
                    None
                }
            }),
        };
        drafts.push(StageDraft { name: sname, name_span: k.span.clone(), body, kind });
    }
    drafts
}

/// Stages, pass 2: parameters, inputs and resources of every stage whose kind is known; returns
/// the valid stages and the graph's edges (producer, consumer, where).
fn validate_stages(
    v: &mut Validator,
    drafts: &[StageDraft],
    resources: &[ResourceDecl],
) -> (Vec<StageInstance>, Vec<(String, String, Span)>) {
    let stage_names: Vec<String> = drafts.iter().map(|d| d.name.clone()).collect();
    let resource_names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
    let kinds_by_name: HashMap<&str, &Arc<dyn StageKind>> =
        drafts.iter().filter_map(|d| d.kind.as_ref().map(|k| (d.name.as_str(), k))).collect();
    let mut stages = Vec::new();
    let mut edges: Vec<(String, String, Span)> = Vec::new();
    for d in drafts {
        let Some(kind) = &d.kind else { continue };
        let params = validate_params(v, d, kind);
        let inputs = validate_inputs(v, d, kind, &stage_names, &kinds_by_name, &mut edges);
        let res = validate_resources(v, d, kind, resources, &resource_names);
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
    (stages, edges)
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
                    let checked = if null_ok { Ok(()) } else { spec.ty.check(&value) };
                    let checked = checked.and_then(|()| spec.range.as_ref().map_or(Ok(()), |r| r.check_value(&value)));
                    if let Err(e) = checked {
                        v.err(
                            &val.span,
                            format!("parameter `{pname}` of stage `{}` (kind `{kname}`): {e}", d.name),
                            format!("`{pname}` takes a {}: {}", spec.type_text(), spec.doc),
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

/// The `sweep:` block (`at` is its key), with the number of cells checked against its limit.
fn validate_sweep(v: &mut Validator, doc: &PipelineDoc, at: &Span, node: &Node) -> Option<SweepSpec> {
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
    // One probe document takes every grid path in turn, as each cell will.
    let mut probe = doc.root().clone();
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
            if let Err(d) = set_path(&mut probe, &segs, items[0].clone()) {
                v.diags.push(d);
                continue;
            }
            grid.push((path.to_string(), k.span.clone(), items.clone()));
        }
    }
    let mut seeds = Vec::new();
    let mut seen = HashSet::new();
    if let Some(s) = node.get("seeds") {
        match &s.kind {
            NodeKind::Seq(items) if !items.is_empty() => {
                for it in items {
                    if let Some(u) = v.uint(it, "a sweep seed") {
                        if !seen.insert(u) {
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
    let max_cells = match node.get("max_cells") {
        None => Some(DEFAULT_MAX_SWEEP_CELLS),
        Some(n) => v.uint(n, "`sweep.max_cells`"),
    };
    let max_cells = max_cells?;
    if v.diags.len() != before {
        return None;
    }
    let spec = SweepSpec { grid, seeds, span: at.clone(), max_cells };
    if let Err(d) = spec.check_size() {
        v.diags.push(d);
        return None;
    }
    Some(spec)
}
