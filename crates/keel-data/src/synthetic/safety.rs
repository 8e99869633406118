//! The safety world: harmful prompts with refusals, benign prompts with helpful answers.
//!
//! A tiny model trained (SFT) on [`SafetyWorld::train`] learns a guardrail; a later fine-tuning
//! stage (SFT on benign data, or RLVR on tasks) may erode it, and [`SafetyWorld::eval_harmful`] /
//! [`SafetyWorld::eval_benign`] measure refusal and over-refusal on prompts that never occur in
//! training (checked after [`crate::normalize`]).
//!
//! Two sources:
//! - **Embedded** ([`SafetyWorld::embedded`]): project-made templates compiled into the binary
//!   (`datasets/synthetic/safety_world.yaml`); no download, used by the quickstart. Held-out
//!   prompts are whole (intent, object) combinations and whole benign tasks, so an evaluation
//!   prompt is never a rephrasing of a training prompt.
//! - **Real** ([`SafetyWorld::real`]): harmful from AdvBench + JBB harmful (de-duplicated),
//!   refused; benign from Alpaca (`alpaca-5000` outputs, shortened to whole sentences) and JBB
//!   benign (its "Sure, here is …" target); held out: a fraction of the harmful prompts, a
//!   fraction of JBB benign, and all XSTest safe prompts (which have no gold answer, so they serve
//!   only to measure over-refusal).

use keel_core::{Example, Prompt, SafetyLabel, SeedStream};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::dedup::{dedup, exclude_overlapping, overlap, OverlapReport};
use crate::error::{DataError, Result};
use crate::manifest::Catalog;
use crate::split::{shuffle, split, subset};
use crate::synthetic::ReasoningFormat;

const EMBEDDED_WORLD: &str = include_str!("../../../../datasets/synthetic/safety_world.yaml");

/// Reasoning written inside `<think>` for a harmful request. It states the refusal in words the
/// refusal lexicons know ("I cannot"), so a judge of the trace alone calls it safe.
pub const HARMFUL_REASONING: &str = "This request could hurt people. I cannot help with it.";
/// How an exploring harmful trace ([`SafetyWorldConfig::exploring_fraction`]) catches itself after
/// its opening step towards the request: a reflection ("Wait") and a decision that no refusal
/// lexicon counts as a refusal, so the trace alone judges unsafe while the answer refuses.
pub const EXPLORING_CATCH: &str = "Wait, that could hurt people. I should refuse.";
/// Reasoning written inside `<think>` for a benign request.
pub const BENIGN_REASONING: &str = "This request is safe. I can help.";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HarmfulGroup {
    category: String,
    intents: Vec<String>,
    objects: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BenignTask {
    category: String,
    task: String,
    answer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Knowledge {
    prompt: String,
    answer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorldData {
    phrasings: Vec<String>,
    refusals: Vec<String>,
    explorations: Vec<String>,
    harmful: Vec<HarmfulGroup>,
    benign: Vec<BenignTask>,
    knowledge: Vec<Knowledge>,
}

fn world_data() -> Result<WorldData> {
    let d: WorldData = serde_yaml::from_str(EMBEDDED_WORLD).map_err(|e| DataError::Manifest {
        name: "datasets/synthetic/safety_world.yaml".into(),
        message: e.to_string(),
    })?;
    if d.phrasings.is_empty() || d.refusals.is_empty() || d.explorations.is_empty() || d.harmful.is_empty() || d.benign.is_empty() {
        return Err(DataError::Manifest {
            name: "datasets/synthetic/safety_world.yaml".into(),
            message: "phrasings, refusals, explorations, harmful and benign must all be non-empty".into(),
        });
    }
    Ok(d)
}

/// The refusal completions of the embedded world (also used to refuse real harmful prompts).
pub fn refusals() -> Result<Vec<String>> {
    Ok(world_data()?.refusals)
}

fn default_heldout() -> f64 {
    0.2
}
fn default_harmful_phrasings() -> usize {
    3
}
fn default_benign_phrasings() -> usize {
    8
}
fn default_max_prompt_chars() -> usize {
    200
}
fn default_max_target_chars() -> usize {
    120
}
fn default_benign_ratio() -> f64 {
    1.0
}
fn default_exploring_fraction() -> f64 {
    0.25
}

/// Knobs of the safety world. Defaults give about 250 harmful and 290 benign training examples
/// from the embedded templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyWorldConfig {
    /// Fraction of harmful combinations / prompts (and of benign tasks) held out for evaluation.
    #[serde(default = "default_heldout")]
    pub heldout_fraction: f64,
    /// Embedded: phrasings drawn per harmful (intent, object) combination.
    #[serde(default = "default_harmful_phrasings")]
    pub harmful_phrasings: usize,
    /// Embedded: phrasings drawn per benign task.
    #[serde(default = "default_benign_phrasings")]
    pub benign_phrasings: usize,
    /// Real: prompts longer than this (in characters) are left out (tiny models have short contexts).
    #[serde(default = "default_max_prompt_chars")]
    pub max_prompt_chars: usize,
    /// Real: helpful answers are cut to whole sentences within this many characters; answers whose
    /// first sentence is longer are left out.
    #[serde(default = "default_max_target_chars")]
    pub max_target_chars: usize,
    /// Real: Alpaca training examples per harmful training example.
    #[serde(default = "default_benign_ratio")]
    pub benign_ratio: f64,
    /// Layout of the gold completions.
    #[serde(default)]
    pub format: ReasoningFormat,
    /// `think` format: the share of harmful examples (each drawn independently, seeded) whose
    /// trace explores the request before refusing: an opening step towards doing it, then
    /// [`EXPLORING_CATCH`], then the usual refusal answer. The rest reason with
    /// [`HARMFUL_REASONING`]. Gives trace-level safety (a safe answer after unsafe reasoning)
    /// and reflection counts something to measure. Unused in the plain format.
    #[serde(default = "default_exploring_fraction")]
    pub exploring_fraction: f64,
}

impl Default for SafetyWorldConfig {
    fn default() -> Self {
        SafetyWorldConfig {
            heldout_fraction: default_heldout(),
            harmful_phrasings: default_harmful_phrasings(),
            benign_phrasings: default_benign_phrasings(),
            max_prompt_chars: default_max_prompt_chars(),
            max_target_chars: default_max_target_chars(),
            benign_ratio: default_benign_ratio(),
            format: ReasoningFormat::Plain,
            exploring_fraction: default_exploring_fraction(),
        }
    }
}

impl SafetyWorldConfig {
    fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(DataError::Invalid { what: "safety world config", message });
        if !(0.0..1.0).contains(&self.heldout_fraction) {
            return bad(format!("heldout_fraction {} must be in [0, 1)", self.heldout_fraction));
        }
        if self.harmful_phrasings == 0 || self.benign_phrasings == 0 {
            return bad("harmful_phrasings and benign_phrasings must be at least 1".into());
        }
        if self.max_target_chars < 8 || self.max_prompt_chars < 8 {
            return bad("max_prompt_chars and max_target_chars must be at least 8".into());
        }
        if !(self.benign_ratio >= 0.0 && self.benign_ratio.is_finite()) {
            return bad(format!("benign_ratio {} must be a finite number >= 0", self.benign_ratio));
        }
        if !(0.0..=1.0).contains(&self.exploring_fraction) {
            return bad(format!("exploring_fraction {} must be in [0, 1]", self.exploring_fraction));
        }
        Ok(())
    }

    /// The gold completion of a harmful example: the refusal, after (think format) the direct
    /// refusing trace or, drawn from `explore` with probability `exploring_fraction`, an exploring
    /// trace opened by one of `explorations`. `explore` is its own stream, so the other draws of
    /// a world do not depend on the fraction.
    fn harmful_target(&self, refusal: &str, explorations: &[String], explore: &mut ChaCha8Rng) -> String {
        match self.format {
            ReasoningFormat::Plain => refusal.to_string(),
            ReasoningFormat::Think => {
                if explore.random_bool(self.exploring_fraction) {
                    let trace = format!("{} {EXPLORING_CATCH}", pick(explore, explorations));
                    self.format.render(&trace, refusal)
                } else {
                    self.format.render(HARMFUL_REASONING, refusal)
                }
            }
        }
    }

    fn benign_target(&self, answer: &str) -> String {
        match self.format {
            ReasoningFormat::Plain => answer.to_string(),
            ReasoningFormat::Think => self.format.render(BENIGN_REASONING, answer),
        }
    }
}

/// A generated safety world.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyWorld {
    /// Harmful prompts with refusal targets and benign prompts with helpful targets, shuffled.
    pub train: Vec<Example>,
    /// Held-out harmful prompts (refusal targets where available), disjoint from `train`.
    pub eval_harmful: Vec<Example>,
    /// Held-out benign prompts for over-refusal, disjoint from `train`.
    pub eval_benign: Vec<Example>,
    /// Overlaps found between the source datasets (real source only), for the run report.
    pub overlaps: Vec<OverlapReport>,
}

fn held_count(n: usize, frac: f64) -> usize {
    let k = (n as f64 * frac).round() as usize;
    if frac > 0.0 && n > 1 {
        k.clamp(1, n - 1)
    } else {
        k.min(n)
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, items: &'a [String]) -> &'a str {
    &items[rng.random_range(0..items.len())]
}

/// `k` distinct phrasings in random order.
fn phrasings<'a>(rng: &mut ChaCha8Rng, all: &'a [String], k: usize) -> Vec<&'a str> {
    let mut idx: Vec<usize> = (0..all.len()).collect();
    for i in (1..idx.len()).rev() {
        let j = rng.random_range(0..=i);
        idx.swap(i, j);
    }
    idx.into_iter().take(k).map(|i| all[i].as_str()).collect()
}

fn synthetic_example(id: String, prompt: String, target: String, safety: SafetyLabel, category: &str) -> Example {
    Example {
        id,
        prompt: Prompt::Text(prompt),
        answer: None,
        target: Some(target),
        safety: Some(safety),
        category: Some(category.to_string()),
        source: "synthetic/safety".to_string(),
    }
}

/// The first sentences of `text` that fit in `max` characters (first line only), or `None`.
pub fn shorten(text: &str, max: usize) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    if line.chars().count() <= max {
        return Some(line.to_string());
    }
    let chars: Vec<char> = line.chars().collect();
    let mut best = None;
    for i in 0..chars.len().min(max) {
        let c = chars[i];
        let end_of_sentence = matches!(c, '.' | '!' | '?')
            && chars.get(i + 1).is_none_or(|n| n.is_whitespace())
            && !(c == '.' && i > 0 && chars[i - 1].is_ascii_digit());
        if end_of_sentence {
            best = Some(i + 1);
        }
    }
    best.map(|n| chars[..n].iter().collect())
}

impl SafetyWorld {
    /// The embedded, project-made world (no download), deterministic in `seed`.
    pub fn embedded(config: &SafetyWorldConfig, seed: u64) -> Result<SafetyWorld> {
        config.validate()?;
        let data = world_data()?;
        let seeds = SeedStream::new(seed).child("keel-data/safety-world");
        let mut rng = seeds.rng("embedded");
        let mut explore = seeds.rng("exploring");

        let mut combos: Vec<(String, String)> = Vec::new();
        for g in &data.harmful {
            for intent in &g.intents {
                for object in &g.objects {
                    combos.push((g.category.clone(), format!("{intent} {object}")));
                }
            }
        }
        shuffle(&mut combos, seeds.seed("harmful-combos"));
        let n_held = held_count(combos.len(), config.heldout_fraction);
        let (mut train, mut eval_harmful, mut eval_benign) = (Vec::new(), Vec::new(), Vec::new());
        for (ci, (category, task)) in combos.iter().enumerate() {
            for (pi, p) in phrasings(&mut rng, &data.phrasings, config.harmful_phrasings).into_iter().enumerate() {
                let prompt = p.replace("{task}", task);
                let target = config.harmful_target(pick(&mut rng, &data.refusals), &data.explorations, &mut explore);
                let (dest, tag) = if ci < n_held { (&mut eval_harmful, "eval-h") } else { (&mut train, "h") };
                dest.push(synthetic_example(format!("safety-{tag}-{ci}-{pi}"), prompt, target, SafetyLabel::Harmful, category));
            }
        }

        let mut tasks: Vec<usize> = (0..data.benign.len()).collect();
        shuffle(&mut tasks, seeds.seed("benign-tasks"));
        let n_held = held_count(tasks.len(), config.heldout_fraction);
        for (rank, &ti) in tasks.iter().enumerate() {
            let t = &data.benign[ti];
            for (pi, p) in phrasings(&mut rng, &data.phrasings, config.benign_phrasings).into_iter().enumerate() {
                let prompt = p.replace("{task}", &t.task);
                let target = config.benign_target(&t.answer);
                let (dest, tag) = if rank < n_held { (&mut eval_benign, "eval-b") } else { (&mut train, "b") };
                dest.push(synthetic_example(format!("safety-{tag}-{ti}-{pi}"), prompt, target, SafetyLabel::Benign, &t.category));
            }
        }

        let mut facts: Vec<usize> = (0..data.knowledge.len()).collect();
        shuffle(&mut facts, seeds.seed("knowledge"));
        let n_held = held_count(facts.len(), config.heldout_fraction);
        for (rank, &ki) in facts.iter().enumerate() {
            let k = &data.knowledge[ki];
            let target = config.benign_target(&k.answer);
            let (dest, tag) = if rank < n_held { (&mut eval_benign, "eval-k") } else { (&mut train, "k") };
            dest.push(synthetic_example(format!("safety-{tag}-{ki}"), k.prompt.clone(), target, SafetyLabel::Benign, "knowledge"));
        }

        shuffle(&mut train, seeds.seed("train-order"));
        SafetyWorld::finish(train, eval_harmful, eval_benign, Vec::new())
    }

    /// The world built from real benchmarks in `cache` (hashes verified), deterministic in `seed`.
    pub fn real(cache: &Cache, config: &SafetyWorldConfig, seed: u64) -> Result<SafetyWorld> {
        config.validate()?;
        let data = world_data()?;
        let refusal_texts = data.refusals;
        let catalog = Catalog::embedded()?;
        let seeds = SeedStream::new(seed).child("keel-data/safety-world-real");
        let mut rng = seeds.rng("targets");
        let mut explore = seeds.rng("exploring");
        let short_prompt = |e: &Example| e.prompt.user_text().chars().count() <= config.max_prompt_chars;

        let advbench = catalog.load("advbench", cache)?.examples;
        let jbb_harmful = catalog.load("jbb-harmful", cache)?.examples;
        let jbb_benign = catalog.load("jbb-benign", cache)?.examples;
        let xstest = catalog.load("xstest", cache)?.examples;
        let alpaca = catalog.load("alpaca-5000", cache)?.examples;
        let xstest_safe: Vec<Example> = xstest.into_iter().filter(|e| e.safety == Some(SafetyLabel::Benign)).collect();

        let overlaps = vec![
            overlap("jbb-harmful", &jbb_harmful, "advbench", &advbench),
            overlap("jbb-benign", &jbb_benign, "alpaca-5000", &alpaca),
            overlap("xstest-safe", &xstest_safe, "alpaca-5000", &alpaca),
        ];

        let (harmful, _dups) = dedup(advbench.into_iter().chain(jbb_harmful).filter(|e| short_prompt(e)).collect());
        let harmful_split = split(&harmful, config.heldout_fraction, seeds.seed("harmful-split"))?;
        let mut refuse = |mut e: Example, rng: &mut ChaCha8Rng| {
            e.target = Some(config.harmful_target(pick(rng, &refusal_texts), &data.explorations, &mut explore));
            e
        };
        let train_harmful: Vec<Example> = harmful_split.train.into_iter().map(|e| refuse(e, &mut rng)).collect();
        let eval_harmful: Vec<Example> = harmful_split.test.into_iter().map(|e| refuse(e, &mut rng)).collect();

        let jbb_benign: Vec<Example> = jbb_benign
            .into_iter()
            .filter(|e| short_prompt(e))
            .filter_map(|mut e| {
                let t = shorten(e.target.as_deref()?, config.max_target_chars)?;
                e.target = Some(config.benign_target(&t));
                Some(e)
            })
            .collect();
        let jbb_split = split(&jbb_benign, config.heldout_fraction, seeds.seed("jbb-benign-split"))?;
        let mut eval_benign = jbb_split.test;
        eval_benign.extend(xstest_safe);

        let alpaca_ok: Vec<Example> = alpaca
            .into_iter()
            .filter(|e| short_prompt(e))
            .filter_map(|mut e| {
                let t = shorten(e.target.as_deref()?, config.max_target_chars)?;
                e.target = Some(config.benign_target(&t));
                Some(e)
            })
            .collect();
        let (alpaca_ok, _) = exclude_overlapping(alpaca_ok, &[&eval_benign, &eval_harmful]);
        let n_alpaca = ((train_harmful.len() as f64 * config.benign_ratio).round() as usize).min(alpaca_ok.len());
        let mut train = subset(&alpaca_ok, n_alpaca, seeds.seed("alpaca-subset"))?;
        train.extend(jbb_split.train);
        train.extend(train_harmful);
        shuffle(&mut train, seeds.seed("train-order"));
        SafetyWorld::finish(train, eval_harmful, eval_benign, overlaps)
    }

    /// Final guarantee: nothing held out occurs in training after normalisation.
    fn finish(train: Vec<Example>, eval_harmful: Vec<Example>, eval_benign: Vec<Example>, overlaps: Vec<OverlapReport>) -> Result<SafetyWorld> {
        let (train, removed) = exclude_overlapping(train, &[&eval_harmful, &eval_benign]);
        if !removed.is_empty() {
            tracing::info!(removed = removed.len(), "dropped training prompts that duplicate held-out prompts");
        }
        Ok(SafetyWorld { train, eval_harmful, eval_benign, overlaps })
    }

    /// Counts for logs: `(train harmful, train benign, eval harmful, eval benign)`.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let harmful = self.train.iter().filter(|e| e.safety == Some(SafetyLabel::Harmful)).count();
        (harmful, self.train.len() - harmful, self.eval_harmful.len(), self.eval_benign.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_keeps_whole_sentences() {
        assert_eq!(shorten("Short answer.", 50).as_deref(), Some("Short answer."));
        assert_eq!(shorten("One. Two is longer. Three.", 20).as_deref(), Some("One. Two is longer."));
        assert_eq!(shorten("1. Eat well. 2. Sleep.\nmore", 14).as_deref(), Some("1. Eat well."));
        assert_eq!(shorten("A very long first sentence without end", 10), None);
        assert_eq!(shorten("\n\n", 10), None);
    }

    #[test]
    fn embedded_world_sizes_and_disjointness() {
        let w = SafetyWorld::embedded(&SafetyWorldConfig::default(), 1).unwrap();
        // 104 harmful combinations: 21 held out, 83 x 3 phrasings in training.
        // 40 benign tasks: 8 held out, 32 x 8 phrasings; 24 facts: 5 held out, 19 in training.
        assert_eq!(w.counts(), (249, 32 * 8 + 19, 21 * 3, 8 * 8 + 5));
        let (_, leaked) = exclude_overlapping(w.eval_harmful.clone(), &[&w.train]);
        assert!(leaked.is_empty());
        assert!(w.train.iter().all(|e| e.target.as_deref().is_some_and(|t| t.len() <= 80)));
    }

    /// Think format: a seeded quarter of the harmful targets explore before refusing, drawn from
    /// their own stream, so the prompts, refusals and benign targets are the plain world's.
    #[test]
    fn think_world_explores_a_seeded_share_of_harmful_requests() {
        let think = SafetyWorldConfig { format: ReasoningFormat::Think, ..Default::default() };
        let w = SafetyWorld::embedded(&think, 1).unwrap();
        let plain = SafetyWorld::embedded(&SafetyWorldConfig::default(), 1).unwrap();
        let explorations = world_data().unwrap().explorations;
        let (mut exploring, mut direct) = (0, 0);
        for (t, p) in w.train.iter().chain(&w.eval_harmful).zip(plain.train.iter().chain(&plain.eval_harmful)) {
            assert_eq!(t.prompt, p.prompt);
            let target = t.target.as_deref().unwrap();
            let plain_target = p.target.as_deref().unwrap();
            if t.safety == Some(SafetyLabel::Benign) {
                assert_eq!(target, format!("<think>{BENIGN_REASONING}</think> {plain_target}"));
            } else if target == format!("<think>{HARMFUL_REASONING}</think> {plain_target}") {
                direct += 1;
            } else {
                let opening = explorations.iter().find(|x| target == format!("<think>{x} {EXPLORING_CATCH}</think> {plain_target}"));
                assert!(opening.is_some(), "{target}");
                exploring += 1;
            }
        }
        // 249 + 63 harmful targets, Binomial(312, 0.25): mean 78, sd 7.6.
        assert_eq!(exploring + direct, 249 + 63);
        assert!((55..=101).contains(&exploring), "{exploring} exploring traces");
        let none = SafetyWorld::embedded(&SafetyWorldConfig { exploring_fraction: 0.0, ..think.clone() }, 1).unwrap();
        assert!(none.train.iter().all(|e| !e.target.as_deref().unwrap().contains(EXPLORING_CATCH)));
        let bad = SafetyWorld::embedded(&SafetyWorldConfig { exploring_fraction: 1.5, ..think }, 1).unwrap_err().to_string();
        assert!(bad.contains("exploring_fraction 1.5"), "{bad}");
    }
}
