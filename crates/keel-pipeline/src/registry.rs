//! Stage kinds and the registry that names them.
//!
//! The engine knows nothing of what stages do; a [`StageKind`] declares its ports, parameters and
//! resources so that a pipeline can be validated completely before any stage is built, and
//! `keel list` can document every kind from the same declarations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use crate::context::StageContext;
use crate::error::StageError;
use crate::params::{ParamProblem, ParamSpec, Params};

/// A typed input or output port.
///
/// `ty` is a message type *name* (e.g. `"Rollout"`); the engine checks that connected ports agree
/// on it. An input of type `"*"` accepts any output type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port name, used in `inputs:` and in `"stage.port"` references.
    pub name: &'static str,
    /// Message type name.
    pub ty: &'static str,
    /// What flows through the port.
    pub doc: &'static str,
    /// For inputs: whether the pipeline must wire it (ignored for outputs).
    pub required: bool,
}

impl PortSpec {
    /// A required input, or an output.
    pub fn new(name: &'static str, ty: &'static str, doc: &'static str) -> Self {
        PortSpec { name, ty, doc, required: true }
    }

    /// An input that may be left unwired (`recv` then returns `None` immediately).
    pub fn optional(name: &'static str, ty: &'static str, doc: &'static str) -> Self {
        PortSpec { name, ty, doc, required: false }
    }
}

/// A shared resource a stage kind uses under a role name (e.g. role `policy`, kind `policy_store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    /// The role name under the stage's `resources:`.
    pub role: &'static str,
    /// The resource kind it must be bound to (`policy_store`).
    pub kind: &'static str,
    /// What the stage does with it.
    pub doc: &'static str,
    /// Whether the pipeline must bind it.
    pub required: bool,
    /// Whether the stage publishes to it. A policy store is closed (waking readers) once every
    /// writer bound to it has finished, so a reader never waits for a version that cannot come.
    pub writes: bool,
}

impl ResourceSpec {
    /// A required resource the stage only reads.
    pub fn reads(role: &'static str, kind: &'static str, doc: &'static str) -> Self {
        ResourceSpec { role, kind, doc, required: true, writes: false }
    }

    /// A required resource the stage publishes to.
    pub fn writes(role: &'static str, kind: &'static str, doc: &'static str) -> Self {
        ResourceSpec { role, kind, doc, required: true, writes: true }
    }

    /// Makes the resource optional (builder style).
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }
}

/// What a stage becomes in a dry run (`keel run --dry-run`), as decided by its kind.
///
/// Why: a dry run executes a pipeline for real but shrunk (a few steps, a few items, a tiny
/// stand-in model), so that a recipe meant for a GPU can be checked end to end on a laptop. The
/// engine does not know what "shrunk" means for a stage; each kind says it here, and the engine
/// applies the changes to the pipeline document and validates the result like any other pipeline
/// (see [`crate::dry_run`]). The default leaves the stage unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DryRun {
    /// Run the stage as this kind instead (e.g. a tiny random model instead of loading weights);
    /// its `with:` is then exactly [`DryRun::set`].
    pub kind: Option<&'static str>,
    /// Parameter values to set over the stage's `with:` (or, with `kind`, the whole `with:`).
    pub set: BTreeMap<String, serde_yaml::Value>,
    /// What the user should know about this stage's dry run (printed and kept in the manifest),
    /// e.g. that a dataset is missing from the cache and an empty set stands in for it.
    pub notes: Vec<String>,
}

impl DryRun {
    /// No change.
    pub fn unchanged() -> Self {
        DryRun::default()
    }

    /// Sets one parameter (builder style).
    pub fn set(mut self, name: &str, value: impl Into<serde_yaml::Value>) -> Self {
        self.set.insert(name.to_string(), value.into());
        self
    }

    /// Adds a note (builder style).
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

/// A running stage, built from validated parameters.
pub trait Stage: Send {
    /// Does the stage's work on its own thread: receive inputs, send outputs, until done.
    ///
    /// Returning `Err` stops the whole pipeline; returning `Ok` closes the stage's outputs so
    /// downstream stages see the end of their streams.
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError>;
}

/// A kind of stage usable under `use:` in pipeline files.
pub trait StageKind: Send + Sync + 'static {
    /// The name written under `use:`.
    fn name(&self) -> &'static str;
    /// One paragraph for `keel list`.
    fn doc(&self) -> &'static str;
    /// Input ports.
    fn inputs(&self) -> Vec<PortSpec> {
        vec![]
    }
    /// Output ports.
    fn outputs(&self) -> Vec<PortSpec> {
        vec![]
    }
    /// Parameters under `with:`.
    fn params(&self) -> Vec<ParamSpec> {
        vec![]
    }
    /// Resources under `resources:`.
    fn resources(&self) -> Vec<ResourceSpec> {
        vec![]
    }
    /// Semantic checks beyond types (ranges, combinations), run at validation with defaults
    /// filled; each problem is reported at the parameter's location.
    fn check(&self, _params: &Params) -> Vec<ParamProblem> {
        vec![]
    }
    /// Files the stage will read (datasets, model weights), hashed into `manifest.json`.
    fn input_files(&self, _params: &Params) -> Vec<PathBuf> {
        vec![]
    }
    /// How the stage shrinks in a dry run (`keel run --dry-run`): fewer steps, fewer items, or
    /// another kind altogether. Called with the validated parameters (defaults filled); an error
    /// is reported at the named parameter, like [`StageKind::check`]. The default: unchanged.
    fn dry_run(&self, _params: &Params) -> Result<DryRun, ParamProblem> {
        Ok(DryRun::unchanged())
    }
    /// Builds the stage; called after the manifest is written, before any stage starts.
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError>;
}

/// The stage kinds a program knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn StageKind>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("kinds", &self.names()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a kind; a later registration under the same name replaces the earlier one, so a
    /// program can override a built-in kind.
    pub fn register<K: StageKind>(&mut self, kind: K) -> &mut Self {
        self.register_arc(Arc::new(kind))
    }

    /// Adds a kind already behind an `Arc`.
    pub fn register_arc(&mut self, kind: Arc<dyn StageKind>) -> &mut Self {
        self.kinds.insert(kind.name(), kind);
        self
    }

    /// The kind registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageKind>> {
        self.kinds.get(name)
    }

    /// All kind names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// All kinds, sorted by name.
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn StageKind>> {
        self.kinds.values()
    }
}

fn default_text(p: &ParamSpec) -> String {
    match p.default {
        None => "required".to_string(),
        Some(d) => format!("default {d}"),
    }
}

/// Renders every registered kind as plain text for `keel list`.
pub fn list_text(registry: &Registry) -> String {
    let mut s = String::new();
    for k in registry.kinds() {
        let _ = writeln!(s, "{}", k.name());
        for line in k.doc().lines() {
            let _ = writeln!(s, "    {line}");
        }
        let ins = k.inputs();
        if !ins.is_empty() {
            let _ = writeln!(s, "  inputs:");
            for p in ins {
                let opt = if p.required { "" } else { ", optional" };
                let _ = writeln!(s, "    {} ({}{opt}): {}", p.name, p.ty, p.doc);
            }
        }
        let outs = k.outputs();
        if !outs.is_empty() {
            let _ = writeln!(s, "  outputs:");
            for p in outs {
                let _ = writeln!(s, "    {} ({}): {}", p.name, p.ty, p.doc);
            }
        }
        let params = k.params();
        if !params.is_empty() {
            let _ = writeln!(s, "  params:");
            for p in params {
                let _ = writeln!(s, "    {} ({}, {}): {}", p.name, p.type_text(), default_text(&p), p.doc);
                if let Some(r) = &p.range {
                    let _ = writeln!(s, "      limit {r}: {}", r.why);
                }
            }
        }
        let res = k.resources();
        if !res.is_empty() {
            let _ = writeln!(s, "  resources:");
            for r in res {
                let mut flags = vec![r.kind.to_string()];
                if r.writes {
                    flags.push("writes".into());
                }
                if !r.required {
                    flags.push("optional".into());
                }
                let _ = writeln!(s, "    {} ({}): {}", r.role, flags.join(", "), r.doc);
            }
        }
        s.push('\n');
    }
    s
}

/// Renders every registered kind as Markdown (the stage reference in the docs).
pub fn list_markdown(registry: &Registry) -> String {
    let mut s = String::from("# Stage kinds\n\n");
    for k in registry.kinds() {
        let _ = writeln!(s, "## `{}`\n\n{}\n", k.name(), k.doc());
        let ins = k.inputs();
        let outs = k.outputs();
        if !ins.is_empty() || !outs.is_empty() {
            s.push_str("| port | direction | type | required | description |\n|---|---|---|---|---|\n");
            for p in ins {
                let req = if p.required { "yes" } else { "no" };
                let _ = writeln!(s, "| `{}` | input | `{}` | {req} | {} |", p.name, p.ty, keel_core::md_cell(p.doc));
            }
            for p in outs {
                let _ = writeln!(s, "| `{}` | output | `{}` | | {} |", p.name, p.ty, keel_core::md_cell(p.doc));
            }
            s.push('\n');
        }
        let params = k.params();
        if !params.is_empty() {
            s.push_str("| parameter | type | default | description |\n|---|---|---|---|\n");
            for p in params {
                let d = p.default.map(|d| format!("`{d}`")).unwrap_or_else(|| "required".into());
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {d} | {} |",
                    p.name,
                    keel_core::md_cell(&p.type_text()),
                    keel_core::md_cell(&match &p.range {
                        Some(r) => format!("{} (limit: {})", p.doc, r.why),
                        None => p.doc.to_string(),
                    })
                );
            }
            s.push('\n');
        }
        let res = k.resources();
        if !res.is_empty() {
            s.push_str("| resource role | kind | access | required | description |\n|---|---|---|---|---|\n");
            for r in res {
                let access = if r.writes { "writes" } else { "reads" };
                let req = if r.required { "yes" } else { "no" };
                let _ = writeln!(s, "| `{}` | `{}` | {access} | {req} | {} |", r.role, r.kind, keel_core::md_cell(r.doc));
            }
            s.push('\n');
        }
    }
    s
}
