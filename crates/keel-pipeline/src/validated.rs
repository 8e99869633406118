//! A validated pipeline and its parts: stages with resolved parameters and wiring, declared
//! resources, the sweep block, the sweep cell a run is, and the canonical configuration hash.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Span};
use crate::document::PipelineDoc;
use crate::params::Params;
use crate::registry::StageKind;
use crate::yaml::{yaml_to_json, Node};

/// Resource kinds the engine provides.
pub const RESOURCE_KINDS: &[&str] = &["policy_store"];

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

/// Default most cells a `sweep:` block may expand to; `sweep.max_cells` raises it. Every cell is
/// validated before any runs (about a millisecond each) and becomes a full run, so a grid past
/// this is almost always a mistake, and one of 10^7 cells would take hours to validate.
pub const DEFAULT_MAX_SWEEP_CELLS: u64 = 10_000;

/// The `sweep:` block: grid paths with their values, and seeds.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// Override path (`stages.X.with.Y`) to its candidate values, in file order.
    pub grid: Vec<(String, Span, Vec<Node>)>,
    /// Seeds to repeat every grid point with (the pipeline's `seed` if none are listed).
    pub seeds: Vec<u64>,
    /// Where the `sweep:` block is.
    pub span: Span,
    /// Most cells allowed (`sweep.max_cells`, default [`DEFAULT_MAX_SWEEP_CELLS`]).
    pub max_cells: u64,
}

impl SweepSpec {
    /// The number of cells (product of the value counts times the seeds) without expanding
    /// anything; `None` if it does not fit in a `u64`.
    pub fn cell_count(&self) -> Option<u64> {
        let seeds = u64::try_from(self.seeds.len().max(1)).ok()?;
        self.grid.iter().try_fold(seeds, |n, (_, _, vals)| n.checked_mul(u64::try_from(vals.len()).ok()?))
    }

    /// An error at the `sweep:` block when it has more cells than `max_cells`, naming the count,
    /// the limit and how to raise it.
    pub fn check_size(&self) -> Result<(), Diagnostic> {
        let count = self.cell_count();
        if count.is_some_and(|n| n <= self.max_cells) {
            return Ok(());
        }
        let mut factors: Vec<String> = self.grid.iter().map(|(path, _, vals)| format!("{} `{path}`", vals.len())).collect();
        factors.push(format!("{} seed(s)", self.seeds.len().max(1)));
        let count = count.map(|n| n.to_string()).unwrap_or_else(|| "more than 2^64".into());
        Err(Diagnostic::new(
            self.span.clone(),
            format!("the sweep has {count} cells ({}), more than the limit of {}", factors.join(" × "), self.max_cells),
        )
        .with_help(format!(
            "every cell is validated up front and is a full run; shrink the grid, or raise the limit with \
             `max_cells: <n>` in the `sweep:` block (or `--set sweep.max_cells=<n>`) if you mean it (default {DEFAULT_MAX_SWEEP_CELLS})"
        )))
    }
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

/// Which cell of a sweep a run is; recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellInfo {
    /// Position in the expansion order (the Slurm array index).
    pub index: usize,
    /// Directory name: `<group>_seed=<seed>`.
    pub id: String,
    /// The parameter point without the seed (cells differing only by seed share it).
    pub group: String,
    /// Override path to value, in grid order.
    pub assignments: Vec<(String, serde_json::Value)>,
    /// The cell's seed.
    pub seed: u64,
}
