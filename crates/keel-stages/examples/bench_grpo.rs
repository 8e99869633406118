//! The Keel side of `bash bench/compare grpo`: one whole GRPO iteration (rollout, score, learn)
//! with Keel's real RL machinery, timed against TRL's `GRPOTrainer` on the same model and prompts.
//!
//! Why a separate binary: the driver (`bench/compare_grpo.py`) alternates Keel and TRL iterations
//! on a shared, loaded machine so that load lands on both sides alike, so Keel runs as a long-lived
//! server that executes one measurement per request (the protocol of `bench_figures serve`).
//!
//! An iteration does exactly what the `rollout → score → learn` stages of an RL pipeline do
//! (`crates/keel-stages/src/kinds/rl.rs`), minus the channels between threads:
//! 1. **rollout**: a detached copy of the current weights (`Policy::version`, what the learner
//!    publishes to the policy store), then the `rollout` stage's own sampling,
//!    [`sample_rollouts`]: prompts rendered with the chat template and tokenised, `group`
//!    completions per prompt from the KV-cache [`keel_rollout::Engine`] at temperature 1, with
//!    behaviour log-probs;
//! 2. **score**: the `answer` reward of the `score` stage, [`MathReward`] with GSM8K flexible
//!    extraction (the last number of the completion equals the sum), through [`CompositeReward`];
//! 3. **learn**: [`Learner::update`] on the [`ScoredBatch`]: reference log-probs (β > 0), GRPO
//!    advantages, clipped policy loss with the k3 KL penalty, backward, gradient clipping, AdamW.
//!
//! Usage (see `docs/performance.md`):
//! * `bench_grpo export DIR` — trains the byte-level BPE tokenizer on a synthetic arithmetic
//!   corpus, initialises `tiny-8m` (seed 0) for it and writes a Hugging Face-layout checkpoint
//!   (`model.safetensors`, `config.json`, `tokenizer.json`, `tokenizer_config.json`) plus
//!   `prompts.json` (rendered prompt texts, their token ids and answers) for TRL to load.
//! * `bench_grpo serve DIR` — loads DIR and answers commands on stdin, one JSON line each on
//!   stdout: `grpo N` (N timed iterations after one untimed warm-up), `check` (mean token log-prob
//!   of the concatenated prompts, for the same-weights check), `samples` (one rollout + score, the
//!   completion texts and rewards, for the same-reward check), `quit`.
//! * `bench_grpo once DIR N` — N timed iterations in a fresh process (profiling).
//!
//! Threads come from `RAYON_NUM_THREADS` (candle's matmul and Keel's kernels both honour it).

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use keel_core::{Example, SeedStream};
use keel_optim::{KlEstimator, KlPlacement, LossAggregation, RewardScaling};
use keel_rewards::{AnswerFormat, CompositeReward, MathReward};
use keel_rollout::SamplingParams;
use keel_stages::messages::ScoredBatch;
use keel_stages::policy::{sample_rollouts, Policy};
use keel_stages::rl::{Algorithm, LearnConfig, Learner};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Completions per prompt (TRL `num_generations`).
const GROUP: usize = 8;
/// Completion token budget (TRL `max_completion_length`).
const MAX_NEW: usize = 64;
/// Learning rate of both sides.
const LR: f64 = 1e-5;
/// KL coefficient β of both sides (non-zero, so both compute reference log-probs).
const BETA: f64 = 0.04;
/// Upper bound of the BPE vocabulary (the model's vocabulary is what training reaches).
const VOCAB_BOUND: usize = 4096;

/// The eight prompts `(a, b)`: "What is a+b?", answer a+b.
const PROMPTS: [(u32, u32); 8] = [(3, 4), (12, 7), (25, 17), (8, 9), (41, 33), (6, 15), (19, 23), (50, 28)];

/// A deterministic arithmetic corpus for the tokenizer: questions, worked sums and answer lines
/// over numbers up to 9999 (a linear congruential sequence), so BPE learns digit groups.
fn corpus() -> Vec<String> {
    let mut x: u64 = 12345;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    (0..20_000)
        .map(|i| {
            let m = [10, 100, 1000, 10_000][i % 4];
            let (a, b) = (next(m), next(m));
            match i % 3 {
                0 => format!("What is {a}+{b}? {a}+{b} = {}. Answer: {}", a + b, a + b),
                1 => format!("Compute {a} plus {b}. The sum is {}.", a + b),
                _ => format!("What is {a}*{b}? The product of {a} and {b} is {}. Answer: {}", a * b, a * b),
            }
        })
        .collect()
}

fn examples() -> Vec<Arc<Example>> {
    PROMPTS
        .iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let mut e = Example::new(format!("bench-{i}"), format!("What is {a}+{b}?"), "bench/arith");
            e.answer = Some((a + b).to_string());
            Arc::new(e)
        })
        .collect()
}

/// The learner configuration both sides share: GRPO with group-scaled advantages, per-sequence
/// mean loss (TRL `loss_type="grpo"`), ε = 0.2, k3 KL in the loss with β = 0.04, constant lr, no
/// weight decay (TRL's default), gradient clip 1.0 (TRL's `max_grad_norm`), one optimiser step per
/// iteration.
fn learn_config() -> LearnConfig {
    LearnConfig {
        algorithm: Algorithm::Grpo,
        lr: LR,
        warmup_steps: 0,
        weight_decay: 0.0,
        grad_clip: 1.0,
        beta: BETA,
        kl_estimator: KlEstimator::K3,
        kl_placement: KlPlacement::Loss,
        eps_low: 0.2,
        eps_high: 0.2,
        aggregation: LossAggregation::SequenceMean,
        scale_rewards: RewardScaling::Group,
        epochs: 1,
        minibatches: 1,
        micro_batch_size: 0,
        gamma: 1.0,
        lam: 0.95,
        vf_coef: 0.1,
        value_clip: 0.2,
        ema_alpha: None,
        lora: None,
    }
}

fn reward() -> Res<CompositeReward> {
    let mut r = CompositeReward::new();
    r.push(1.0, Box::new(MathReward::new(AnswerFormat::Gsm8kFlexible)))?;
    Ok(r)
}

/// Wall-clock seconds of each phase of one iteration.
#[derive(Default, Clone, Copy)]
struct Phases {
    rollout: f64,
    score: f64,
    learn: f64,
}

struct Bench {
    learner: Learner,
    reward: CompositeReward,
    examples: Vec<Arc<Example>>,
    seeds: SeedStream,
    step: u64,
    warm: bool,
}

impl Bench {
    fn new(dir: &Path) -> Res<Self> {
        let policy = Policy::load(dir)?;
        let seeds = SeedStream::new(0);
        let learner = Learner::new(policy, learn_config(), seeds.child("learn"))?;
        Ok(Bench { learner, reward: reward()?, examples: examples(), seeds, step: 0, warm: false })
    }

    /// Rollout and score of the current step, as the `rollout` and `score` stages do them.
    fn rollout_and_score(&mut self, phases: &mut Phases) -> Res<ScoredBatch> {
        let t0 = Instant::now();
        let version = self.learner.policy.version(self.learner.updates())?;
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            max_new_tokens: MAX_NEW,
            n: GROUP,
            seed: self.seeds.seed(&format!("step-{}", self.step)),
            ..SamplingParams::default()
        };
        let rollouts = sample_rollouts(&version, &self.examples, &params, version.updates + 1, self.step)?;
        let t1 = Instant::now();
        let scored = self.reward.score_batch(&rollouts, 1)?;
        let t2 = Instant::now();
        phases.rollout = (t1 - t0).as_secs_f64();
        phases.score = (t2 - t1).as_secs_f64();
        Ok(ScoredBatch { step: self.step, group_size: GROUP, temperature: 1.0, scored })
    }

    /// One GRPO iteration; returns the mean reward and the mean completion length.
    fn iteration(&mut self, phases: &mut Phases) -> Res<(f64, f64)> {
        let batch = self.rollout_and_score(phases)?;
        let t0 = Instant::now();
        let metrics = self.learner.update(&batch)?;
        phases.learn = t0.elapsed().as_secs_f64();
        self.step += 1;
        let get = |k: &str| metrics.get(k).copied().unwrap_or(f64::NAN);
        Ok((get("reward_mean"), get("completion_len")))
    }

    /// `n` timed iterations (after one untimed warm-up on first use), as one JSON line.
    fn measure(&mut self, n: usize) -> Res<String> {
        let mut p = Phases::default();
        if !self.warm {
            self.iteration(&mut p)?;
            self.warm = true;
        }
        let (mut times, mut phases) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut reward, mut len) = (f64::NAN, f64::NAN);
        for _ in 0..n {
            let t0 = Instant::now();
            (reward, len) = self.iteration(&mut p)?;
            times.push(t0.elapsed().as_secs_f64());
            phases.push(p);
        }
        let list = |f: &dyn Fn(&Phases) -> f64| phases.iter().map(|p| format!("{:.6}", f(p))).collect::<Vec<_>>().join(",");
        let times: Vec<String> = times.iter().map(|t| format!("{t:.6}")).collect();
        Ok(format!(
            "{{\"workload\":\"grpo\",\"times\":[{}],\"rollout\":[{}],\"score\":[{}],\"learn\":[{}],\"value\":{reward},\"completion_len\":{len}}}",
            times.join(","),
            list(&|p| p.rollout),
            list(&|p| p.score),
            list(&|p| p.learn),
        ))
    }

    /// Mean token log-prob of all prompts concatenated into one sequence, under the current
    /// weights: the TRL side computes the same number to prove both hold the same model.
    fn check(&self) -> Res<String> {
        let policy = &self.learner.policy;
        let mut ids = Vec::new();
        for e in &self.examples {
            ids.extend(policy.encode(&policy.render(e)?)?);
        }
        let n = ids.len();
        let t = Tensor::from_vec(ids, (1, n), &Device::Cpu)?;
        let lp = policy.model.inference_view().token_logprobs(&t, None)?;
        let mean = lp.mean_all()?.to_scalar::<f32>()?;
        Ok(format!("{{\"mean_logprob\":{mean},\"tokens\":{n}}}"))
    }

    /// One rollout + score without learning: every completion's text and reward, so the driver
    /// can check that its Python reward agrees with Keel's on the same texts.
    fn samples(&mut self) -> Res<String> {
        let mut p = Phases::default();
        let batch = self.rollout_and_score(&mut p)?;
        let rows: Vec<serde_json::Value> = batch
            .scored
            .iter()
            .map(|s| {
                serde_json::json!({
                    "text": s.rollout.completion.text,
                    "answer": s.rollout.example.answer,
                    "reward": s.reward,
                    "tokens": s.rollout.completion.token_ids.len(),
                })
            })
            .collect();
        Ok(serde_json::json!({ "samples": rows }).to_string())
    }
}

/// Trains the tokenizer, initialises `tiny-8m` (seed 0) for it and writes checkpoint + prompts.
fn export(dir: &Path) -> Res<String> {
    let tok = keel_model::train_bpe(&corpus(), VOCAB_BOUND, &[])?;
    let tok_dir = dir.join("tokenizer-only");
    tok.save(&tok_dir)?;
    let policy = Policy::from_scratch("tiny-8m", &tok_dir, 0)?;
    policy.save(dir)?;
    std::fs::remove_dir_all(&tok_dir)?;
    let prompts: Vec<serde_json::Value> = examples()
        .iter()
        .map(|e| -> Res<serde_json::Value> {
            let text = policy.render(e)?;
            let ids = policy.encode(&text)?;
            Ok(serde_json::json!({ "prompt": text, "prompt_ids": ids, "answer": e.answer }))
        })
        .collect::<Res<_>>()?;
    let meta = serde_json::json!({
        "prompts": prompts,
        "group": GROUP,
        "max_new_tokens": MAX_NEW,
        "lr": LR,
        "beta": BETA,
    });
    std::fs::write(dir.join("prompts.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(format!(
        "{{\"parameters\":{},\"vocab_size\":{}}}",
        policy.model.num_parameters(),
        policy.model.config().vocab_size
    ))
}

fn parse_n(arg: Option<&str>, default: usize) -> Res<usize> {
    match arg {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("repetition count must be a positive integer, got {s:?}").into()),
        },
    }
}

const USAGE: &str = "usage: bench_grpo export DIR | serve DIR | once DIR [N]";

fn main() -> Res<()> {
    keel_model::ops::tune_cpu_runtime();
    keel_model::ops::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.get(1).map(Path::new).ok_or(USAGE)?;
    match args.first().map(String::as_str) {
        Some("export") => println!("{}", export(dir)?),
        Some("once") => {
            let n = parse_n(args.get(2).map(String::as_str), 3)?;
            let mut b = Bench::new(dir)?;
            println!("{}", b.measure(n)?);
        }
        Some("serve") => {
            let mut b = Bench::new(dir)?;
            let stdin = std::io::stdin();
            let mut out = std::io::stdout().lock();
            writeln!(out, "{{\"ready\":true,\"parameters\":{}}}", b.learner.policy.model.num_parameters())?;
            out.flush()?;
            for line in stdin.lock().lines() {
                let line = line?;
                let mut parts = line.split_whitespace();
                let reply = match parts.next() {
                    None | Some("quit") => break,
                    Some("grpo") => parse_n(parts.next(), 1).and_then(|n| b.measure(n)),
                    Some("check") => b.check(),
                    Some("samples") => b.samples(),
                    Some(other) => Err(format!("unknown command {other:?} (grpo N, check, samples, quit)").into()),
                };
                let reply = reply.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
                writeln!(out, "{reply}")?;
                out.flush()?;
            }
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}
