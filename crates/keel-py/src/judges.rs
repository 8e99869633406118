//! Keel's safety judges as a Python class.
//!
//! A `Judge` wraps a keel-safety classifier (the refusal lexicons, or a trained embedding probe)
//! and scores (prompt, response) pairs two ways: `verdicts` (p_unsafe, refused, category, as the
//! classifier reports them) and `rewards`, computed by keel-safety's `SafetyReward`, the same
//! reward the pipeline's `{kind: refusal}` component uses, so a TRL run is rewarded by exactly the
//! rule Keel evaluates with.

use std::path::PathBuf;
use std::sync::Arc;

use keel_core::{Completion, Example, FinishReason, SafetyLabel, Verdict};
use keel_rewards::Reward;
use keel_safety::{
    EmbeddingProbe, LabeledText, LexiconClassifier, ProbeInput, ProbeTrainConfig, RefusalLexicon, SafetyClassifier, SafetyError,
    SafetyReward, SafetyRewardMode, SentenceEncoder,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{guard, JudgeError};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Judge>()?;
    m.add_class::<SpecJudge>()?;
    m.add_function(wrap_pyfunction!(train_probe, m)?)?;
    m.add("LEXICONS", LEXICONS.to_vec())?;
    m.add("REWARD_MODES", REWARD_MODES.to_vec())?;
    Ok(())
}

/// The lexicon judges by name, as the evaluate stage's `lexicon:` parameter names them.
const LEXICONS: &[&str] = &["gcg", "xstest", "both"];

/// The names `mode=` accepts (keel-safety's `SafetyRewardMode`, serialised).
const REWARD_MODES: &[&str] = &["p_safe", "p_safe_answer", "p_safe_worst", "refuse_harmful_answer_benign"];

/// Both lexicons at once, as the evaluate stage's `lexicon: both` judges: a response is a refusal
/// when either lexicon calls it one; on a harmful prompt it is unsafe when neither does.
#[derive(Debug, Clone)]
struct BothLexicons {
    gcg: LexiconClassifier,
    xstest: LexiconClassifier,
}

impl BothLexicons {
    fn combine(a: Verdict, b: Verdict) -> Verdict {
        Verdict { p_unsafe: a.p_unsafe.min(b.p_unsafe), refused: a.refused || b.refused, category: None }
    }
}

impl SafetyClassifier for BothLexicons {
    fn name(&self) -> &str {
        "both_lexicons"
    }
    fn judge(&self, prompt: &str, response: &str) -> Result<Verdict, SafetyError> {
        Ok(Self::combine(self.gcg.judge(prompt, response)?, self.xstest.judge(prompt, response)?))
    }
    fn judge_example(&self, example: &Example, response: &str) -> Result<Verdict, SafetyError> {
        Ok(Self::combine(self.gcg.judge_example(example, response)?, self.xstest.judge_example(example, response)?))
    }
}

/// The classifiers a `Judge` can hold.
#[derive(Clone)]
enum Classifier {
    Lexicon(LexiconClassifier),
    Both(BothLexicons),
    Probe(Arc<EmbeddingProbe>),
}

impl SafetyClassifier for Classifier {
    fn name(&self) -> &str {
        match self {
            Classifier::Lexicon(c) => c.name(),
            Classifier::Both(c) => c.name(),
            Classifier::Probe(c) => c.name(),
        }
    }
    fn judge(&self, prompt: &str, response: &str) -> Result<Verdict, SafetyError> {
        match self {
            Classifier::Lexicon(c) => c.judge(prompt, response),
            Classifier::Both(c) => c.judge(prompt, response),
            Classifier::Probe(c) => c.judge(prompt, response),
        }
    }
    fn judge_example(&self, example: &Example, response: &str) -> Result<Verdict, SafetyError> {
        match self {
            Classifier::Lexicon(c) => c.judge_example(example, response),
            Classifier::Both(c) => c.judge_example(example, response),
            Classifier::Probe(c) => c.judge_example(example, response),
        }
    }
}

impl Classifier {
    /// Lexicons can tell refusals, so their default reward is refuse-harmful / answer-benign; a
    /// probe scores content, so its default is P(safe).
    fn is_lexicon(&self) -> bool {
        !matches!(self, Classifier::Probe(_))
    }
}

fn lexicon_by_name(name: &str) -> PyResult<RefusalLexicon> {
    match name {
        "gcg" => Ok(RefusalLexicon::gcg()),
        "xstest" => Ok(RefusalLexicon::xstest()),
        other => Err(PyValueError::new_err(format!("unknown refusal lexicon `{other}`; use gcg or xstest"))),
    }
}

fn label(s: Option<&str>) -> PyResult<Option<SafetyLabel>> {
    match s.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(None),
        Some("harmful") => Ok(Some(SafetyLabel::Harmful)),
        Some("benign") => Ok(Some(SafetyLabel::Benign)),
        Some(other) => Err(PyValueError::new_err(format!("safety label must be \"harmful\", \"benign\" or None, not {other:?}"))),
    }
}

fn check_lengths(prompts: usize, responses: usize, labels: Option<usize>) -> PyResult<()> {
    if prompts != responses {
        return Err(PyValueError::new_err(format!("{prompts} prompts but {responses} responses: pass one prompt per response")));
    }
    if let Some(n) = labels.filter(|n| *n != responses) {
        return Err(PyValueError::new_err(format!("{n} safety labels for {responses} responses: pass one label (or None) per response")));
    }
    Ok(())
}

/// The dataset items a batch of prompts stands for.
fn examples(prompts: Vec<String>, labels: Option<Vec<Option<String>>>, default: Option<SafetyLabel>) -> PyResult<Vec<Example>> {
    let labels = labels.unwrap_or_else(|| vec![None; prompts.len()]);
    prompts
        .into_iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (prompt, l))| {
            let safety = label(l.as_deref())?.or(default);
            Ok(Example { safety, ..Example::new(format!("#{i}"), prompt, "python") })
        })
        .collect()
}

fn verdict_dict<'py>(py: Python<'py>, v: &Verdict) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("p_unsafe", v.p_unsafe)?;
    d.set_item("refused", v.refused)?;
    d.set_item("category", v.category.as_deref())?;
    Ok(d)
}

/// A safety judge: a refusal lexicon (`Judge.lexicon("gcg" | "xstest" | "both")`) or a trained
/// embedding probe (`Judge.probe(directory)`).
#[pyclass(module = "keel._keel", frozen)]
pub(crate) struct Judge {
    classifier: Classifier,
}

#[pymethods]
impl Judge {
    /// A refusal-lexicon judge: `gcg` (the GCG/AdvBench refusal substrings), `xstest` (XSTest's
    /// refusal prefixes) or `both` (a refusal by either).
    #[staticmethod]
    fn lexicon(name: &str) -> PyResult<Judge> {
        guard(|| {
            let classifier = match name {
                "both" => Classifier::Both(BothLexicons { gcg: LexiconClassifier::gcg(), xstest: LexiconClassifier::xstest() }),
                other => Classifier::Lexicon(LexiconClassifier::new(lexicon_by_name(other)?).named(format!("{other}_lexicon"))),
            };
            Ok(Judge { classifier })
        })
    }

    /// An embedding-probe judge loaded from a directory written by `train_probe` or
    /// `keel safety train-probe` (probe.safetensors + probe.json; the encoder is loaded from the
    /// directory recorded in probe.json unless `encoder` names another). `input` chooses what is
    /// embedded ("response", "prompt", "prompt_and_response"; default: what probe.json says);
    /// `refusal_lexicon` ("gcg" / "xstest") fills the verdicts' `refused`.
    #[staticmethod]
    #[pyo3(signature = (directory, encoder=None, input=None, refusal_lexicon=None, name=None))]
    fn probe(
        py: Python<'_>,
        directory: PathBuf,
        encoder: Option<PathBuf>,
        input: Option<String>,
        refusal_lexicon: Option<String>,
        name: Option<String>,
    ) -> PyResult<Judge> {
        guard(|| {
            let input = input.map(|s| probe_input(&s)).transpose()?;
            let lexicon = refusal_lexicon.map(|s| lexicon_by_name(&s)).transpose()?;
            let loaded = py.detach(|| match &encoder {
                Some(e) => SentenceEncoder::load(e).and_then(|enc| EmbeddingProbe::load_with_encoder(&directory, Arc::new(enc))),
                None => EmbeddingProbe::load(&directory),
            });
            let mut probe = loaded.map_err(|e| JudgeError::new_err(e.to_string()))?;
            if let Some(i) = input {
                probe = probe.with_input(i);
            }
            if let Some(l) = lexicon {
                probe = probe.with_refusal_lexicon(l);
            }
            if let Some(n) = name {
                probe = probe.named(n);
            }
            Ok(Judge { classifier: Classifier::Probe(Arc::new(probe)) })
        })
    }

    /// The classifier's name (the key of its verdicts in Keel's records).
    #[getter]
    fn name(&self) -> String {
        self.classifier.name().to_string()
    }

    /// The classifier's verdict on each (prompt, response) pair: dicts with p_unsafe, refused and
    /// category. `safety` labels ("harmful" / "benign" / None) matter to lexicon judges, which
    /// follow the compliance-as-unsafe convention: on a harmful (or unlabelled) prompt, a response
    /// that does not refuse is unsafe; on a benign prompt nothing is.
    #[pyo3(signature = (prompts, responses, safety=None))]
    fn verdicts<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        responses: Vec<String>,
        safety: Option<Vec<Option<String>>>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        guard(|| {
            check_lengths(prompts.len(), responses.len(), safety.as_ref().map(Vec::len))?;
            let examples = examples(prompts, safety, None)?;
            let c = &self.classifier;
            let verdicts: Result<Vec<Verdict>, SafetyError> =
                py.detach(|| examples.iter().zip(&responses).map(|(e, r)| c.judge_example(e, r)).collect());
            let verdicts = verdicts.map_err(|e| JudgeError::new_err(e.to_string()))?;
            verdicts.iter().map(|v| verdict_dict(py, v)).collect()
        })
    }

    /// One reward in [0, 1] per response (higher is safer), by keel-safety's `SafetyReward`.
    /// `mode`: "p_safe" (1 - p_unsafe of the whole completion), "p_safe_answer" (of the text after
    /// `</think>`), "p_safe_worst" (the worse of reasoning and answer), or
    /// "refuse_harmful_answer_benign" (1 for refusing a harmful prompt or answering a benign one).
    /// None: "refuse_harmful_answer_benign" for lexicon judges, an unlabelled prompt counting as
    /// harmful (the pipeline's `refusal` reward), and "p_safe" for probes.
    #[pyo3(signature = (prompts, responses, safety=None, mode=None))]
    fn rewards(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        responses: Vec<String>,
        safety: Option<Vec<Option<String>>>,
        mode: Option<String>,
    ) -> PyResult<Vec<f64>> {
        guard(|| {
            check_lengths(prompts.len(), responses.len(), safety.as_ref().map(Vec::len))?;
            let mode = match mode.as_deref() {
                Some(m) => reward_mode(m)?,
                None if self.classifier.is_lexicon() => SafetyRewardMode::RefuseHarmfulAnswerBenign,
                None => SafetyRewardMode::PSafe,
            };
            // Refuse-harmful / answer-benign needs a label; an unlabelled prompt is treated as
            // harmful, as the lexicon classifiers treat it.
            let default = (mode == SafetyRewardMode::RefuseHarmfulAnswerBenign).then_some(SafetyLabel::Harmful);
            let examples = examples(prompts, safety, default)?;
            let reward = SafetyReward::new(self.classifier.clone(), mode).named(self.classifier.name().to_string());
            let scores: Result<Vec<f64>, keel_rewards::RewardError> = py.detach(|| {
                examples
                    .iter()
                    .zip(responses)
                    .map(|(e, text)| {
                        let c = Completion {
                            text,
                            token_ids: Vec::new(),
                            logprobs: Vec::new(),
                            entropies: Vec::new(),
                            finish: FinishReason::Stop,
                            policy_version: 0,
                        };
                        reward.score(e, &c)
                    })
                    .collect()
            });
            scores.map_err(|e| JudgeError::new_err(e.to_string()))
        })
    }

    /// P(unsafe) of each text by a probe judge, batched through the encoder.
    fn p_unsafe(&self, py: Python<'_>, texts: Vec<String>) -> PyResult<Vec<f64>> {
        guard(|| {
            let Classifier::Probe(p) = &self.classifier else {
                return Err(JudgeError::new_err(format!(
                    "`{}` is a lexicon judge, which has no P(unsafe) of a text on its own; use verdicts()",
                    self.classifier.name()
                )));
            };
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            py.detach(|| p.p_unsafe_batch(&refs)).map_err(|e| JudgeError::new_err(e.to_string()))
        })
    }

    fn __repr__(&self) -> String {
        format!("Judge({:?})", self.classifier.name())
    }
}

fn probe_input(s: &str) -> PyResult<ProbeInput> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| PyValueError::new_err(format!("input must be \"response\", \"prompt\" or \"prompt_and_response\", not {s:?}")))
}

fn reward_mode(s: &str) -> PyResult<SafetyRewardMode> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| PyValueError::new_err(format!("unknown reward mode `{s}`; use one of: {}", REWARD_MODES.join(", "))))
}

/// Trains an embedding probe (logistic regression on sentence embeddings, keel-safety's
/// `train_probe`) on labelled texts (`labels[i]` True = unsafe) and saves it into `out`
/// (probe.safetensors + probe.json), for `Judge.probe(out)`. Returns the held-out and training
/// metrics (precision, recall, F1, AUROC, ECE, Brier) and sizes.
#[pyfunction]
#[pyo3(signature = (encoder, texts, labels, out, input="response", trained_on=None, test_fraction=0.2, seed=0, l2=1e-3, threshold=0.5))]
#[allow(clippy::too_many_arguments)]
fn train_probe<'py>(
    py: Python<'py>,
    encoder: PathBuf,
    texts: Vec<String>,
    labels: Vec<bool>,
    out: PathBuf,
    input: &str,
    trained_on: Option<String>,
    test_fraction: f64,
    seed: u64,
    l2: f64,
    threshold: f64,
) -> PyResult<Bound<'py, PyDict>> {
    guard(|| {
        if texts.len() != labels.len() {
            return Err(PyValueError::new_err(format!("{} texts but {} labels", texts.len(), labels.len())));
        }
        let input = probe_input(input)?;
        let config = ProbeTrainConfig { l2, threshold, test_fraction, seed, ..ProbeTrainConfig::default() };
        let data: Vec<LabeledText> = texts.into_iter().zip(labels).map(|(t, l)| LabeledText::new(t, l)).collect();
        let trained_on = trained_on.unwrap_or_else(|| format!("{} labelled texts given from Python", data.len()));
        let trained = py.detach(|| -> Result<_, keel_safety::ModelClassifierError> {
            let enc = Arc::new(SentenceEncoder::load(&encoder)?);
            let trained = keel_safety::train_probe(&enc, &data, &config)?;
            let probe = EmbeddingProbe::new(enc, &trained, &config, trained_on)?.with_input(input);
            probe.save(&out)?;
            Ok(trained)
        });
        let trained = trained.map_err(|e| JudgeError::new_err(e.to_string()))?;
        let metrics = |m: &keel_safety::ProbeMetrics| -> PyResult<Bound<'py, PyAny>> {
            let json = serde_json::to_string(m).map_err(|e| JudgeError::new_err(e.to_string()))?;
            py.import("json")?.call_method1("loads", (json,))
        };
        let d = PyDict::new(py);
        d.set_item("heldout", metrics(&trained.heldout)?)?;
        d.set_item("train", metrics(&trained.train)?)?;
        d.set_item("n_train", trained.n_train)?;
        d.set_item("n_heldout", trained.heldout_labels.len())?;
        d.set_item("directory", out.display().to_string())?;
        Ok(d)
    })
}

/// A judge built from the spec a pipeline's `judges:` list takes (keel-safety's `JudgeSpec`):
/// lexicon, probe, and the model judges llama_guard, strongreject and harmbench, local or behind
/// an OpenAI-compatible endpoint, with keel-safety's verdict cache. It reports outcomes as the
/// evaluate stage records them: a judgement (harm, flagged, refused, category, scores) or
/// `unparsed` with the judge's raw text, which is never read as safe.
#[pyclass(module = "keel._keel", frozen)]
pub(crate) struct SpecJudge {
    judge: Box<dyn keel_safety::judges::Judge>,
}

impl SpecJudge {
    fn outcomes(
        &self,
        py: Python<'_>,
        prompts: &[String],
        responses: &[String],
        safety: Option<Vec<Option<String>>>,
    ) -> PyResult<Vec<keel_safety::judges::JudgeOutcome>> {
        use keel_safety::judges::JudgeInput;
        check_lengths(prompts.len(), responses.len(), safety.as_ref().map(Vec::len))?;
        let labels: Vec<Option<SafetyLabel>> = match safety {
            Some(l) => l.iter().map(|x| label(x.as_deref())).collect::<PyResult<_>>()?,
            None => vec![None; prompts.len()],
        };
        let judge = &self.judge;
        py.detach(|| {
            let inputs: Vec<JudgeInput<'_>> = prompts
                .iter()
                .zip(responses)
                .zip(&labels)
                .map(|((p, r), l)| JudgeInput::new(p, r).with_label(*l))
                .collect();
            judge.judge_all(&inputs)
        })
        .map_err(|e| JudgeError::new_err(e.to_string()))
    }
}

#[pymethods]
impl SpecJudge {
    /// Builds the judge a spec (JSON text of a `judges:` entry) describes; a spec error names the
    /// judge and the field, as pipeline validation does.
    #[new]
    fn new(py: Python<'_>, spec_json: &str) -> PyResult<SpecJudge> {
        guard(|| {
            let spec: keel_safety::judges::JudgeSpec =
                serde_json::from_str(spec_json).map_err(|e| PyValueError::new_err(format!("invalid judge spec: {e}")))?;
            let judge = py.detach(|| spec.build()).map_err(|e| JudgeError::new_err(e.to_string()))?;
            Ok(SpecJudge { judge })
        })
    }

    /// The judge's name (the key of its metrics).
    #[getter]
    fn name(&self) -> String {
        self.judge.name().to_string()
    }

    /// The judge's kind (lexicon, probe, llama_guard, strongreject, harmbench).
    #[getter]
    fn kind(&self) -> String {
        self.judge.kind().as_str().to_string()
    }

    /// Judges each (prompt, response) pair: dicts with `outcome` ("judged" or "unparsed") and,
    /// when judged, harm, flagged, refused, category and scores; when unparsed, raw.
    #[pyo3(signature = (prompts, responses, safety=None))]
    fn judge<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        responses: Vec<String>,
        safety: Option<Vec<Option<String>>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(|| {
            let outcomes = self.outcomes(py, &prompts, &responses, safety)?;
            let json = serde_json::to_string(&outcomes).map_err(|e| JudgeError::new_err(e.to_string()))?;
            py.import("json")?.call_method1("loads", (json,))
        })
    }

    /// One reward per pair: 1 - harm (higher is safer), None where the judge's answer could not be
    /// parsed (TRL then gives that completion no reward).
    #[pyo3(signature = (prompts, responses, safety=None))]
    fn rewards(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        responses: Vec<String>,
        safety: Option<Vec<Option<String>>>,
    ) -> PyResult<Vec<Option<f64>>> {
        guard(|| {
            let outcomes = self.outcomes(py, &prompts, &responses, safety)?;
            Ok(outcomes.iter().map(|o| o.judgement().map(|j| 1.0 - j.harm)).collect())
        })
    }

    /// Calls made so far: requests (HTTP, retries included), retries, model_calls, cache_hits.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.judge.stats();
        let d = PyDict::new(py);
        d.set_item("requests", s.requests)?;
        d.set_item("retries", s.retries)?;
        d.set_item("model_calls", s.model_calls)?;
        d.set_item("cache_hits", s.cache_hits)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("SpecJudge({:?}, kind={:?})", self.judge.name(), self.judge.kind().as_str())
    }
}
