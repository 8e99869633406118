//! Stage kinds that produce data: synthetic worlds, catalogued datasets, trained tokenizers.

use std::path::PathBuf;

use keel_data::{
    Cache, Catalog, DataError, ReasoningFormat, SafetyWorld, SafetyWorldConfig, TaskDomain, MAX_TASK_WORLD_EXAMPLES,
};
use keel_core::SafetyLabel;
use keel_pipeline::{DryRun, ParamProblem, ParamSpec, ParamType, Params, PortSpec, Stage, StageContext, StageError, StageKind};
use rand::seq::SliceRandom;
use serde::Deserialize;

use crate::ctx::Ctx;
use crate::kinds::recv_examples;
use crate::messages::{ExampleSet, TokenizerFiles, EXAMPLES, TOKENIZER};

/// Most examples a task world holds, as a parameter bound (whole numbers below 2^53 are exact in
/// an `f64`).
const WORLD_MAX: f64 = MAX_TASK_WORLD_EXAMPLES as f64;

/// Why task-world sizes are bounded, shown with the error and by `keel list`.
const WORLD_WHY: &str = "task examples are generated in memory and written to JSONL, about 0.5 KB each";

/// Largest vocabulary a trained tokenizer or a tiny model may have: keel-model's
/// [`keel_model::MAX_BPE_VOCAB_SIZE`] (2^20), checked at validation so a value like
/// `9223372036854775807` never reaches the trainer.
pub const MAX_VOCAB_SIZE: usize = keel_model::MAX_BPE_VOCAB_SIZE;

/// Why vocabulary sizes are bounded, shown with the error and by `keel list`.
pub const VOCAB_WHY: &str =
    "a model over it holds a vocabulary x hidden embedding matrix; real vocabularies stop near 260k tokens";

/// `synthetic_world`: generates a verifiable task world and a safety world from the seed.
pub struct SyntheticWorld;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorldParams {
    task: String,
    task_config: serde_yaml::Mapping,
    n_train: usize,
    n_test: usize,
    n_base_task: usize,
    safety: String,
    safety_config: serde_yaml::Mapping,
    format: ReasoningFormat,
}

impl WorldParams {
    fn domain(&self) -> Result<TaskDomain, String> {
        let mut map = self.task_config.clone();
        map.insert("kind".into(), self.task.clone().into());
        serde_yaml::from_value(serde_yaml::Value::Mapping(map)).map_err(|e| e.to_string())
    }

    fn safety_config(&self) -> Result<SafetyWorldConfig, String> {
        let mut map = self.safety_config.clone();
        if !map.contains_key("format") {
            map.insert("format".into(), serde_yaml::to_value(self.format).map_err(|e| e.to_string())?);
        }
        serde_yaml::from_value(serde_yaml::Value::Mapping(map)).map_err(|e| e.to_string())
    }
}

impl StageKind for SyntheticWorld {
    fn name(&self) -> &'static str {
        "synthetic_world"
    }
    fn doc(&self) -> &'static str {
        "Generates, deterministically from the seed, a verifiable reasoning task (arithmetic, sorting or counting) \
         and a safety world (harmful prompts with refusals, benign prompts with helpful answers). `base_mix` is \
         what a from-scratch base model is trained on: the first `n_base_task` task examples plus the safety training set."
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::new("task_train", EXAMPLES, "task examples with gold worked solutions"),
            PortSpec::new("task_test", EXAMPLES, "held-out task examples"),
            PortSpec::new("safety_train", EXAMPLES, "harmful→refusal and benign→answer pairs"),
            PortSpec::new("harmful_eval", EXAMPLES, "held-out harmful prompts, disjoint from training"),
            PortSpec::new("benign_eval", EXAMPLES, "held-out benign prompts (over-refusal)"),
            PortSpec::new("base_mix", EXAMPLES, "task subset + safety training set, shuffled"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("task", ParamType::Enum(&["arithmetic", "sorting", "counting"]), "arithmetic", "task domain"),
            ParamSpec::optional("task_config", ParamType::Map, "{}", "difficulty knobs of the domain (see docs/pipelines.md)"),
            ParamSpec::optional("n_train", ParamType::Int, "2000", "task training examples").range(0.0, WORLD_MAX, WORLD_WHY),
            ParamSpec::optional("n_test", ParamType::Int, "200", "held-out task examples").range(0.0, WORLD_MAX, WORLD_WHY),
            ParamSpec::optional("n_base_task", ParamType::Int, "1000", "task examples included in base_mix")
                .range(0.0, WORLD_MAX, WORLD_WHY),
            ParamSpec::optional(
                "safety",
                ParamType::Enum(&["embedded", "real", "none"]),
                "embedded",
                "safety world source: project-made prompts (no download) or real benchmarks from KEEL_DATA_DIR",
            ),
            ParamSpec::optional("safety_config", ParamType::Map, "{}", "safety world knobs (heldout_fraction, harmful_phrasings, exploring_fraction, ...)"),
            ParamSpec::optional("format", ParamType::Enum(&["plain", "think"]), "plain", "completion layout; `think` wraps reasoning in <think>…</think>, a seeded quarter of task traces end with a re-check (\"Wait, let me check: …\") and a share of harmful traces (safety_config.exploring_fraction, default 0.25) explore the request before refusing"),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        match params.parse::<WorldParams>() {
            Ok(p) => {
                if let Err(e) = p.domain() {
                    out.push(ParamProblem::new("task_config", format!("invalid task configuration: {e}")));
                }
                if let Err(e) = p.safety_config() {
                    out.push(ParamProblem::new("safety_config", format!("invalid safety configuration: {e}")));
                }
                if p.n_train.saturating_add(p.n_test) > MAX_TASK_WORLD_EXAMPLES {
                    out.push(ParamProblem::new(
                        "n_test",
                        format!(
                            "n_train + n_test = {} exceeds the maximum {MAX_TASK_WORLD_EXAMPLES} ({WORLD_WHY})",
                            p.n_train as u128 + p.n_test as u128
                        ),
                    ));
                }
                if p.n_base_task > p.n_train {
                    out.push(ParamProblem::new("n_base_task", format!("{} exceeds n_train = {}", p.n_base_task, p.n_train)));
                }
            }
            Err(e) => out.push(ParamProblem::new("task", e.to_string())),
        }
        out
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let p = params.parse::<WorldParams>().map_err(|e| ParamProblem::new("task", e.to_string()))?;
        let n_train = p.n_train.min(200);
        Ok(DryRun::unchanged()
            .set("n_train", n_train)
            .set("n_test", p.n_test.min(20))
            .set("n_base_task", p.n_base_task.min(n_train)))
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        let p: WorldParams = params.parse()?;
        Ok(Box::new(WorldStage(p)))
    }
}

struct WorldStage(WorldParams);

impl Stage for WorldStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let p = self.0;
        let seeds = ctx.seeds();
        let domain = p.domain().map_err(StageError::msg)?;
        let world = keel_data::task_world(&domain, p.n_train, p.n_test, seeds.seed("task-world"), p.format)
            .ctx(|| "generating the task world".to_string())?;
        let safety_cfg = p.safety_config().map_err(StageError::msg)?;
        let safety = match p.safety.as_str() {
            "embedded" => Some(SafetyWorld::embedded(&safety_cfg, seeds.seed("safety-world")).ctx(|| "generating the embedded safety world".to_string())?),
            "real" => {
                let cache = Cache::from_env().ctx(|| "opening the dataset cache".to_string())?;
                Some(
                    SafetyWorld::real(&cache, &safety_cfg, seeds.seed("safety-world"))
                        .ctx(|| "building the safety world from real benchmarks (set KEEL_DATA_DIR or run `keel data fetch`)".to_string())?,
                )
            }
            _ => None,
        };
        let (safety_train, harmful, benign) = match safety {
            Some(s) => (s.train, s.eval_harmful, s.eval_benign),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        let mut mix: Vec<_> = world.train.iter().take(p.n_base_task).cloned().collect();
        mix.extend(safety_train.iter().cloned());
        mix.shuffle(&mut seeds.rng("base-mix"));
        let counts = [
            ("task_train", world.train.len()),
            ("task_test", world.test.len()),
            ("safety_train", safety_train.len()),
            ("harmful_eval", harmful.len()),
            ("benign_eval", benign.len()),
            ("base_mix", mix.len()),
        ];
        ctx.log_metrics(0, counts.iter().map(|(k, v)| (format!("n_{k}"), *v as f64)))?;
        let dir = ctx.stage_dir()?;
        let sets = [
            ("task_train", world.train),
            ("task_test", world.test),
            ("safety_train", safety_train),
            ("harmful_eval", harmful),
            ("benign_eval", benign),
            ("base_mix", mix),
        ];
        for (port, examples) in sets {
            let mut jsonl = String::new();
            for e in &examples {
                jsonl.push_str(&serde_json::to_string(e).ctx(|| "serialising an example".to_string())?);
                jsonl.push('\n');
            }
            keel_core::write_atomic(&dir.join(format!("{port}.jsonl")), jsonl.as_bytes())?;
            ctx.send(port, ExampleSet::new(port, examples))?;
        }
        Ok(())
    }
}

/// `dataset`: loads a catalogued benchmark (`keel data list`) from the cache, verifying its sha256.
pub struct Dataset;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetParams {
    name: String,
    max: usize,
    shuffle: bool,
    safety: Option<SafetyLabel>,
}

impl StageKind for Dataset {
    fn name(&self) -> &'static str {
        "dataset"
    }
    fn doc(&self) -> &'static str {
        "Loads a catalogued dataset (see `keel data list`) from the cache (KEEL_DATA_DIR), verifying its sha256, \
         optionally keeping only the items with one safety label (XSTest holds both), shuffled by the stage seed \
         and cut to `max` items. In a dry run a dataset missing from the cache becomes an empty set, with a note."
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("examples", EXAMPLES, "the dataset's items")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("name", ParamType::Str, "catalogue name, e.g. advbench, gsm8k-test, xstest"),
            ParamSpec::optional("max", ParamType::Int, "0", "keep at most this many items (0 = all)"),
            ParamSpec::optional("shuffle", ParamType::Bool, "false", "shuffle (seeded) before cutting to `max`"),
            ParamSpec::optional(
                "safety",
                ParamType::Enum(&["harmful", "benign"]),
                "~",
                "keep only items with this safety label (e.g. XSTest's unsafe or safe prompts); null keeps all",
            ),
        ]
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let p = params.parse::<DatasetParams>().map_err(|e| ParamProblem::new("name", e.to_string()))?;
        let (catalog, cache) = match (Catalog::embedded(), Cache::from_env()) {
            (Ok(c), Ok(cache)) => (c, cache),
            _ => return Ok(DryRun::unchanged()),
        };
        let Ok(m) = catalog.get(&p.name) else { return Ok(DryRun::unchanged()) };
        let path = cache.path_for(m);
        Ok(if path.exists() {
            DryRun::unchanged()
        } else {
            DryRun::unchanged().note(format!(
                "dataset `{}` is not in the cache ({} missing): an EMPTY set stands in for it, so its benchmark is \
                 absent from the results; `keel data fetch {}` gets it",
                p.name,
                path.display(),
                p.name
            ))
        })
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let Ok(p) = params.parse::<DatasetParams>() else { return Vec::new() };
        let catalog = Catalog::embedded();
        // A FIFO or device where the cache expects the file is refused at validation, before
        // anything opens it.
        if let (Ok(c), Ok(cache)) = (&catalog, Cache::from_env()) {
            if let Ok(m) = c.get(&p.name) {
                let path = cache.path_for(m);
                if path.exists() {
                    if let Err(e) = keel_data::regular_file_len(&path) {
                        return vec![ParamProblem::new("name", e.to_string())
                            .with_help(format!("delete it and run `keel data fetch {}`", p.name))];
                    }
                }
            }
        }
        match catalog {
            Ok(c) if c.get(&p.name).is_err() => {
                let names: Vec<String> = c.names().into_iter().map(str::to_string).collect();
                let mut prob = ParamProblem::new("name", format!("unknown dataset `{}`", p.name));
                prob = prob.with_help(match keel_pipeline::closest(&p.name, names.iter().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`? (`keel data list` shows all)"),
                    None => format!("known datasets: {}", names.join(", ")),
                });
                vec![prob]
            }
            _ => Vec::new(),
        }
    }
    fn input_files(&self, params: &Params) -> Vec<PathBuf> {
        let (Ok(p), Ok(c), Ok(cache)) = (params.parse::<DatasetParams>(), Catalog::embedded(), Cache::from_env()) else {
            return Vec::new();
        };
        // Only a regular file is hashed into the manifest: hashing a FIFO would block the run.
        match c.get(&p.name) {
            Ok(m) => Some(cache.path_for(m)).into_iter().filter(|p| p.is_file()).collect(),
            Err(_) => Vec::new(),
        }
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(DatasetStage(params.parse()?)))
    }
}

struct DatasetStage(DatasetParams);

impl Stage for DatasetStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let p = self.0;
        let catalog = Catalog::embedded().ctx(|| "reading the dataset catalogue".to_string())?;
        let manifest = catalog.get(&p.name).ctx(|| format!("looking up dataset `{}`", p.name))?;
        let cache = Cache::from_env().ctx(|| "opening the dataset cache".to_string())?;
        let loaded = match manifest.load(&cache) {
            Err(DataError::NotCached { path, .. }) if ctx.is_dry_run() => {
                ctx.log(&format!("dry run: {} is not in the cache; sending an empty `{}` set", path.display(), p.name));
                ctx.log_metrics(0, [("n", 0.0), ("missing", 1.0)])?;
                return ctx.send("examples", ExampleSet::new(p.name, Vec::new()));
            }
            other => other.ctx(|| format!("loading dataset `{}`", p.name))?,
        };
        let mut examples = loaded.examples;
        if let Some(label) = p.safety {
            let before = examples.len();
            examples.retain(|e| e.safety == Some(label));
            if examples.is_empty() && before > 0 {
                return Err(StageError::msg(format!(
                    "dataset `{}` has no items labelled {label:?} (of {before}); remove `safety:` to keep all items",
                    p.name
                )));
            }
        }
        if p.shuffle {
            examples.shuffle(&mut ctx.seeds().rng("shuffle"));
        }
        if p.max > 0 {
            examples.truncate(p.max);
        }
        ctx.log_metrics(0, [("n", examples.len() as f64), ("skipped", loaded.skipped.len() as f64), ("filtered", loaded.filtered as f64)])?;
        ctx.send("examples", ExampleSet::new(p.name, examples))
    }
}

/// `train_tokenizer`: fits a byte-level BPE tokenizer (ChatML specials) to example texts.
pub struct TrainTokenizer;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokParams {
    vocab_size: usize,
}

impl StageKind for TrainTokenizer {
    fn name(&self) -> &'static str {
        "train_tokenizer"
    }
    fn doc(&self) -> &'static str {
        "Trains a byte-level BPE tokenizer with ChatML special tokens and chat template on the prompts and targets \
         of its input examples, so a from-scratch model is saved in the same layout as a Hugging Face model."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("corpus", EXAMPLES, "example sets whose texts the tokenizer is fitted to (fan-in allowed)")]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("tokenizer", TOKENIZER, "directory with tokenizer.json and tokenizer_config.json")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::optional("vocab_size", ParamType::Int, "512", "vocabulary size (at least 259: specials + 256 bytes)").range(
            259.0,
            MAX_VOCAB_SIZE as f64,
            VOCAB_WHY,
        )]
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(TokStage(params.parse()?)))
    }
}

struct TokStage(TokParams);

impl Stage for TokStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let set = recv_examples(ctx, "corpus")?.ok_or_else(|| StageError::msg("no corpus"))?;
        let mut texts = Vec::with_capacity(set.examples.len() * 2);
        for e in &set.examples {
            for m in e.prompt.to_messages() {
                texts.push(m.content);
            }
            if let Some(t) = &e.target {
                texts.push(t.clone());
            }
        }
        let tok = keel_model::train_bpe(&texts, self.0.vocab_size, &[]).ctx(|| "training the BPE tokenizer".to_string())?;
        let dir = ctx.stage_dir()?.join("tokenizer");
        tok.save(&dir).ctx(|| format!("saving the tokenizer to {}", dir.display()))?;
        ctx.log_metrics(0, [("vocab_size", tok.vocab_size() as f64), ("texts", texts.len() as f64)])?;
        ctx.send("tokenizer", TokenizerFiles { dir })
    }
}

#[cfg(test)]
mod tests {
    /// The validation errors of a one-stage pipeline whose stage is `stage` (YAML flow mapping).
    fn errors(stage: &str) -> String {
        let text = format!("name: bounds\nseed: 1\nstages:\n  s: {stage}\n");
        match keel_pipeline::load_str("bounds.yaml", &text, &[], &crate::registry()) {
            Ok(_) => String::new(),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn sizes_beyond_the_machine_are_refused_at_validation() {
        let e = errors("{use: synthetic_world, with: {n_train: 1000000000000000}}");
        assert!(e.contains("bounds.yaml:4:") && e.contains("n_train"), "{e}");
        assert!(e.contains("above the maximum 1000000") && e.contains("JSONL"), "{e}");
        // YAML reads 1e15 as a float: refused as not an integer, never reaching the generator.
        let e = errors("{use: synthetic_world, with: {n_train: 1e15}}");
        assert!(e.contains("n_train") && e.contains("float"), "{e}");
        // Each within the limit, the sum beyond it.
        let e = errors("{use: synthetic_world, with: {n_train: 600000, n_test: 600000}}");
        assert!(e.contains("n_train + n_test = 1200000 exceeds the maximum 1000000"), "{e}");
        assert_eq!(errors("{use: synthetic_world, with: {n_train: 1000000, n_test: 0, n_base_task: 10}}"), "");
        let e = errors("{use: train_tokenizer, with: {vocab_size: 9223372036854775807}}");
        assert!(e.contains("vocab_size") && e.contains("above the maximum 1048576"), "{e}");
        let e = errors("{use: train_tokenizer, with: {vocab_size: 100}}");
        assert!(e.contains("below the minimum 259"), "{e}");
        let e = errors("{use: tiny_model, with: {family: llama, vocab_size: 9223372036854775807}}");
        assert!(e.contains("vocab_size") && e.contains("above the maximum 1048576"), "{e}");
        let e = errors("{use: tiny_model, with: {family: llama, vocab_size: 262}}");
        assert!(e.contains("below the minimum 263"), "{e}");
    }
}
