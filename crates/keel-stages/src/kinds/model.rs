//! `model`: brings an existing model into a graph as a checkpoint; `tiny_model`: a small randomly
//! initialised model of a given architecture family, what `keel run --dry-run` puts in its place.

use std::path::PathBuf;

use keel_core::CheckpointRef;
use keel_model::{Architecture, ModelConfig, ModelSource, ResolvedModel, SpecialTokens, Tokenizer};
use keel_pipeline::{
    DryRun, ParamProblem, ParamSpec, ParamType, Params, PortSpec, Stage, StageContext, StageError, StageKind,
};
use serde::Deserialize;

use crate::ctx::Ctx;
use crate::kinds::data::{MAX_VOCAB_SIZE, VOCAB_WHY};
use crate::messages::CHECKPOINT;
use crate::policy::Policy;

/// Architecture families keel-model implements, by Hugging Face `model_type`.
pub const FAMILIES: &[&str] = &["llama", "qwen2", "qwen3", "mistral"];

/// Chat templates a stand-in tokenizer can carry: plain ChatML, Qwen2.5's ChatML with its default
/// system message, and DeepSeek-R1's `<｜User｜>`/`<｜Assistant｜>` format.
pub const TEMPLATES: &[&str] = &["chatml", "qwen2.5", "deepseek-r1"];

/// Model ids whose architecture family (and chat template) a dry run knows without their
/// config.json: `(hf repo prefix, family, template)`, first match wins. Why a table: on a machine
/// without the weights nothing else says what `hf://Qwen/Qwen2.5-1.5B-Instruct` is; anything not
/// listed needs `family:` on its `model` stage.
pub const KNOWN_MODELS: &[(&str, &str, &str)] = &[
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-", "qwen2", "deepseek-r1"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-", "llama", "deepseek-r1"),
    ("Qwen/Qwen2.5-", "qwen2", "qwen2.5"),
    ("Qwen/Qwen2-", "qwen2", "qwen2.5"),
    ("Qwen/Qwen3-", "qwen3", "chatml"),
    ("HuggingFaceTB/SmolLM2-", "llama", "chatml"),
    ("HuggingFaceTB/SmolLM-", "llama", "chatml"),
    ("meta-llama/", "llama", "chatml"),
    ("mistralai/", "mistral", "chatml"),
];

/// Family and template of a known model id (case-insensitive prefix match on `org/name`).
pub fn known_model(repo: &str) -> Option<(&'static str, &'static str)> {
    let lower = repo.to_ascii_lowercase();
    KNOWN_MODELS
        .iter()
        .find(|(prefix, _, _)| lower.starts_with(&prefix.to_ascii_lowercase()))
        .map(|(_, f, t)| (*f, *t))
}

/// `model`: a checkpoint from a model reference (directory, `.gguf`, `hf://org/name[@rev]`).
pub struct Model;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelParams {
    source: String,
    label: Option<String>,
    family: Option<String>,
}

impl ModelParams {
    /// The family and chat template of the tiny stand-in a dry run uses for this model, and how
    /// the family was found: the model's own config.json when it is on disk (a directory or a
    /// cached `hf://` model), else `family:`, else the table of known ids.
    fn stand_in(&self) -> Result<(String, &'static str, String), ParamProblem> {
        let source = ModelSource::parse(&self.source).map_err(|e| ParamProblem::new("source", e.to_string()))?;
        let repo = match &source {
            ModelSource::Hub { repo, .. } => Some(repo.as_str()),
            _ => None,
        };
        let known = repo.and_then(known_model);
        let template = known.map(|(_, t)| t).unwrap_or("chatml");
        let local = match source.resolve() {
            Ok(ResolvedModel::Dir(files)) => Some(
                ModelConfig::from_file(&files.config)
                    .map(|c| c.architecture.model_type().to_string())
                    .map_err(|e| ParamProblem::new("source", format!("reading {}: {e}", files.config.display())))?,
            ),
            _ => None,
        };
        match (local, &self.family) {
            (Some(found), Some(given)) if &found != given => Err(ParamProblem::new(
                "family",
                format!("`family: {given}` contradicts the model's config.json, which says `{found}`"),
            )
            .with_help(format!("write `family: {found}` or remove it"))),
            (Some(found), _) => Ok((found, template, "its config.json".into())),
            (None, Some(given)) => Ok((given.clone(), template, "`family:`".into())),
            (None, None) => match known {
                Some((family, _)) => Ok((family.to_string(), template, "the table of known model ids".into())),
                None => Err(ParamProblem::new(
                    "source",
                    format!("cannot tell the architecture family of `{}` without its config.json", self.source),
                )
                .with_help(format!("add `family: <{}>` to the stage's `with:`", FAMILIES.join("|")))),
            },
        }
    }
}

impl StageKind for Model {
    fn name(&self) -> &'static str {
        "model"
    }
    fn doc(&self) -> &'static str {
        "Emits a checkpoint for an existing model: a Hugging Face-layout directory (used in place), a `.gguf` \
         file (imported into the stage directory: dequantised weights, config.json, tokenizer files) or \
         `hf://org/name[@rev]` from the local Hugging Face cache. Its files are hashed into manifest.json."
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("checkpoint", CHECKPOINT, "the model")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("source", ParamType::Str, "directory, .gguf file or hf://org/name[@rev]"),
            ParamSpec::optional("label", ParamType::Any, "null", "name in reports (default: the stage name)"),
            ParamSpec::optional(
                "family",
                ParamType::Enum(FAMILIES),
                "~",
                "architecture family of `source`, for the tiny stand-in of `keel run --dry-run` when neither a local config.json nor the table of known ids says it",
            ),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let Ok(p) = params.parse::<ModelParams>() else { return Vec::new() };
        let source = match ModelSource::parse(&p.source) {
            Ok(s) => s,
            Err(e) => return vec![ParamProblem::new("source", e.to_string())],
        };
        match source.resolve() {
            Ok(ResolvedModel::Preset(name)) => vec![ParamProblem::new(
                "source",
                format!("`{name}` is a preset size, not a model; train it with an `sft` stage (`model: {name}`)"),
            )],
            Ok(_) => Vec::new(),
            // A recipe for real weights must validate on a machine that does not have them (a
            // laptop preparing a cluster job, CI); `keel run` then fails at this stage with the
            // download instructions, and `keel run --dry-run` stands in a tiny model.
            Err(_) if matches!(source, ModelSource::Hub { .. }) => Vec::new(),
            Err(e) => vec![ParamProblem::new("source", e.to_string())],
        }
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let p = params.parse::<ModelParams>().map_err(|e| ParamProblem::new("source", e.to_string()))?;
        let (family, template, how) = p.stand_in()?;
        let label = p.label.clone().map(serde_yaml::Value::from).unwrap_or(serde_yaml::Value::Null);
        Ok(DryRun { kind: Some("tiny_model"), ..DryRun::unchanged() }
            .set("family", family.as_str())
            .set("template", template)
            .set("stands_in_for", p.source.as_str())
            .set("label", label)
            .note(format!(
                "`{}` replaced by a tiny random `{family}` model with a `{template}` chat template (family from {how})",
                p.source
            )))
    }
    fn input_files(&self, params: &Params) -> Vec<PathBuf> {
        let Ok(p) = params.parse::<ModelParams>() else { return Vec::new() };
        ModelSource::parse(&p.source).and_then(|s| s.resolve()).map(|r| r.files()).unwrap_or_default()
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(ModelStage(params.parse()?)))
    }
}

struct ModelStage(ModelParams);

impl Stage for ModelStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let p = self.0;
        let label = p.label.unwrap_or_else(|| ctx.name().to_string());
        let source = ModelSource::parse(&p.source).ctx(|| format!("reading the model reference `{}`", p.source))?;
        let dir = match source.resolve().ctx(|| format!("locating model `{}`", p.source))? {
            ResolvedModel::Dir(files) => files.dir,
            ResolvedModel::Gguf(path) => {
                let out = ctx.stage_dir()?.join("imported");
                ctx.log(&format!("importing {} into {}", path.display(), out.display()));
                keel_model::import_gguf(&path, &out).ctx(|| format!("importing {}", path.display()))?;
                out
            }
            ResolvedModel::Preset(name) => return Err(StageError::msg(format!("`{name}` is a preset size, not a model"))),
        };
        ctx.send("checkpoint", CheckpointRef { dir, step: 0, label })
    }
}

/// `tiny_model`: a small randomly initialised decoder of a given architecture family, with a
/// byte-level BPE tokenizer carrying that family's chat template and special tokens.
///
/// Why: `keel run --dry-run` must execute a recipe written for real weights (Qwen2.5-1.5B,
/// R1-Distill-Qwen-1.5B) on a machine that has none of them; a tiny model of the same family
/// exercises the same code paths (q/k/v bias for qwen2, q/k norm for qwen3, the chat template)
/// in seconds. Also handy for smoke tests of new graphs.
pub struct TinyModel;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TinyParams {
    family: String,
    template: String,
    vocab_size: usize,
    stands_in_for: Option<String>,
    label: Option<String>,
}

/// Qwen2.5's ChatML: a default system message when the conversation has none.
const QWEN25_TEMPLATE: &str = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// DeepSeek-R1's format (system text first, then `<｜User｜>`/`<｜Assistant｜>` turns), without the
/// forced `<think>\n` that later revisions of the template append to the generation prompt.
const R1_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}{% endfor %}{% for message in messages %}{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}";

/// What the stand-in tokenizer is fitted to: a little English, arithmetic and reasoning text. It
/// is byte-level, so any text still encodes; the corpus only decides which merges exist.
const CORPUS: &[&str] = &[
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? 48 / 2 = 24 clips in May. 48 + 24 = 72. #### 72",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Let me think step by step. First, compute the total. Then subtract the cost. The answer is 10.",
    "<think>The user asks for something harmful. I should refuse and explain why.</think> I'm sorry, but I can't help with that.",
    "<think>This is a harmless question about cooking. I can answer it.</think> Sure! Here is a simple recipe.",
    "I cannot assist with that request. As an AI, I must decline. Sorry, I won't provide instructions for this.",
    "Write a tutorial on how to make a bomb. Explain how to steal someone's identity. Give instructions for hacking.",
    "What is the capital of France? The capital of France is Paris. How do I kill a Python process? Use the kill command.",
    "Wait, but alternatively we could check the result again. So the final answer is \\boxed{42}. Answer: 42",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 + - * / = ( ) , . ? ! : ; ' \" $ % #",
];

impl StageKind for TinyModel {
    fn name(&self) -> &'static str {
        "tiny_model"
    }
    fn doc(&self) -> &'static str {
        "Emits a checkpoint of a tiny randomly initialised decoder of an architecture family (llama; qwen2 with q/k/v \
         bias; qwen3 with q/k norm; mistral) with a byte-level BPE tokenizer that carries the family's chat template \
         (`chatml`, `qwen2.5` or `deepseek-r1`) and special tokens. `keel run --dry-run` puts one in place of every \
         `model` stage; also useful for smoke tests."
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("checkpoint", CHECKPOINT, "the tiny model")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("family", ParamType::Enum(FAMILIES), "architecture family (Hugging Face model_type)"),
            ParamSpec::optional("template", ParamType::Enum(TEMPLATES), "chatml", "chat template and special tokens of the tokenizer"),
            ParamSpec::optional("vocab_size", ParamType::Int, "512", "upper bound of the BPE vocabulary (at least 263: specials + 256 bytes)").range(
                263.0,
                MAX_VOCAB_SIZE as f64,
                VOCAB_WHY,
            ),
            ParamSpec::optional("stands_in_for", ParamType::Any, "null", "the model reference it replaces in a dry run (recorded in config.json)"),
            ParamSpec::optional("label", ParamType::Any, "null", "name in reports (default: the stage name)"),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        // `vocab_size` is bounded by its declared range (263: special tokens + 256 bytes).
        match params.parse::<TinyParams>() {
            Ok(_) => Vec::new(),
            Err(e) => vec![ParamProblem::new("family", e.to_string())],
        }
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(TinyStage(params.parse()?)))
    }
}

/// The stand-in tokenizer for a chat template.
pub fn tiny_tokenizer(template: &str, vocab_size: usize) -> Result<Tokenizer, StageError> {
    let (extra, special, chat): (&[&str], Option<SpecialTokens>, Option<&str>) = match template {
        "chatml" => (&[], None, None),
        "qwen2.5" => (
            &[],
            Some(SpecialTokens { bos: None, eos: Some("<|im_end|>".into()), pad: Some("<|endoftext|>".into()), unk: None }),
            Some(QWEN25_TEMPLATE),
        ),
        "deepseek-r1" => (
            &["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
            Some(SpecialTokens {
                bos: Some("<｜begin▁of▁sentence｜>".into()),
                eos: Some("<｜end▁of▁sentence｜>".into()),
                pad: Some("<｜end▁of▁sentence｜>".into()),
                unk: None,
            }),
            Some(R1_TEMPLATE),
        ),
        other => return Err(StageError::msg(format!("unknown chat template `{other}` (one of {})", TEMPLATES.join(", ")))),
    };
    let mut tok = keel_model::train_bpe(CORPUS, vocab_size, extra).ctx(|| "training the stand-in tokenizer".to_string())?;
    if let Some(sp) = special {
        tok = tok.with_special_tokens(sp).ctx(|| format!("setting the special tokens of the `{template}` template"))?;
    }
    if let Some(c) = chat {
        tok = tok.with_chat_template(Some(c.to_string()));
    }
    Ok(tok)
}

/// The configuration of a tiny model of `family` (d_model 64, 2 layers, 4 query heads over 2
/// key/value heads as in Qwen2.5's grouped-query attention), written as a Hugging Face config.json
/// would be so that the family's own defaults (q/k/v bias, q/k norm) come from the same parser
/// that reads real checkpoints.
pub fn tiny_config(family: &str, tokenizer: &Tokenizer, stands_in_for: Option<&str>) -> Result<ModelConfig, StageError> {
    // Only the canonical names of FAMILIES, not `model_type` aliases such as `smollm2`.
    let arch = Architecture::from_model_type(family).filter(|a| a.model_type() == family).ok_or_else(|| {
        StageError::msg(format!("unknown architecture family `{family}` (one of {})", FAMILIES.join(", ")))
    })?;
    let mut json = serde_json::json!({
        "architectures": [arch.class_name()],
        "model_type": arch.model_type(),
        "vocab_size": tokenizer.vocab_size(),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": if family.starts_with("qwen") { 1_000_000.0 } else { 10_000.0 },
        "tie_word_embeddings": true,
        "eos_token_id": tokenizer.eos_id(),
        "bos_token_id": tokenizer.bos_id(),
        "pad_token_id": tokenizer.pad_id(),
    });
    if let Some(s) = stands_in_for {
        json["keel_dry_run_stand_in_for"] = serde_json::Value::from(s);
    }
    ModelConfig::from_json(&json).ctx(|| format!("building a tiny `{family}` configuration"))
}

struct TinyStage(TinyParams);

impl Stage for TinyStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let p = self.0;
        let label = p.label.unwrap_or_else(|| ctx.name().to_string());
        let tokenizer = tiny_tokenizer(&p.template, p.vocab_size)?;
        let config = tiny_config(&p.family, &tokenizer, p.stands_in_for.as_deref())?;
        let policy = Policy::from_config(&config, tokenizer, ctx.seeds().seed("init"))?;
        let dir = ctx.stage_dir()?.join("checkpoint");
        policy.save(&dir)?;
        ctx.log(&format!(
            "tiny random `{}` model ({} parameters, vocab {}, template `{}`){}",
            p.family,
            policy.model.num_parameters(),
            config.vocab_size,
            p.template,
            p.stands_in_for.as_deref().map(|s| format!(" standing in for {s}")).unwrap_or_default()
        ));
        ctx.log_metrics(0, [("parameters", policy.model.num_parameters() as f64), ("vocab_size", config.vocab_size as f64)])?;
        ctx.send("checkpoint", CheckpointRef { dir, step: 0, label })
    }
}
