//! The Keel side of `bench/compare`: times the `tiny-8m` reference workloads and prints JSON.
//!
//! Why a separate binary: `bench/compare` runs Keel and PyTorch *alternately* on a shared, loaded
//! machine, so that load hits both sides alike and the Keel/PyTorch ratio stays meaningful. Keel
//! therefore runs as a long-lived server that executes one measurement per request, while the
//! Python driver runs the PyTorch measurement in between. mimalloc is the global allocator, as in
//! the `keel` CLI: the system allocator returns the large per-step buffers to the kernel and pays a
//! page fault per 4 KiB on every step (~12 % of a step in the profile that motivated it).
//!
//! Usage (see `docs/performance.md`):
//! * `bench_figures export DIR` — writes the seed-0 `tiny-8m` weights (`model.safetensors`, HF
//!   names) and `config.json` for the PyTorch reference to load.
//! * `bench_figures serve` — reads commands from stdin, one JSON line per command on stdout:
//!   `train N`, `forward N`, `generate N` (N timed repetitions after one warm-up), `quit`.
//! * `bench_figures once WORKLOAD N` — one workload, then prints its timings and the process's peak
//!   resident memory (`VmHWM`), so peak memory is measured in a process of its own.
//! * `bench_figures peak` — measured f32 matmul throughput (the MFU denominator).
//!
//! Reference configuration: batch 16 × 128 tokens, f32, threads from `RAYON_NUM_THREADS`
//! (candle's matmul and Keel's kernels both honour it). Generation: 16 prompts of 32 tokens, 64 new
//! tokens each, greedy, with the KV cache.

use std::io::{BufRead, Write};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use keel_model::{CausalLm, ModelConfig, ModelError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 16;
const SEQ: usize = 128;
const VOCAB: usize = 4096;
const PROMPT: usize = 32;
const NEW_TOKENS: usize = 64;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The deterministic token ids both sides use: `ids[i] = (i · 7919) mod 4096` over the flat batch.
fn batch_ids(b: usize, t: usize) -> Res<Tensor> {
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7919) % VOCAB) as u32).collect();
    Ok(Tensor::from_vec(ids, (b, t), &Device::Cpu)?)
}

struct Bench {
    model: CausalLm,
    infer: CausalLm,
    opt: AdamW,
    ids: Tensor,
    prompt: Tensor,
    /// Workloads already run once (the first run of each pays one-off allocation and is not timed).
    warm: std::collections::HashSet<String>,
}

impl Bench {
    fn new() -> Res<Self> {
        let cfg = ModelConfig::preset("tiny-8m", VOCAB)?;
        let model = CausalLm::new(&cfg, 0, &Device::Cpu, DType::F32)?;
        let infer = model.inference_view();
        // Same hyper-parameters as torch.optim.AdamW's defaults except lr (weight decay 0.01).
        let params = ParamsAdamW { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let opt = AdamW::new(model.trainable_vars(), params)?;
        Ok(Bench { model, infer, opt, ids: batch_ids(BATCH, SEQ)?, prompt: batch_ids(BATCH, PROMPT)?, warm: Default::default() })
    }

    /// Forward, mean next-token NLL, backward, AdamW update.
    fn train_step(&mut self) -> Res<f64> {
        let loss = self.model.token_logprobs(&self.ids, None)?.mean_all()?.neg()?;
        self.opt.backward_step(&loss)?;
        Ok(loss.to_scalar::<f32>()? as f64)
    }

    /// Forward-only token log-probs on the detached inference view (no autograd graph).
    fn forward(&self) -> Res<f64> {
        let lp = self.infer.token_logprobs(&self.ids, None)?;
        Ok(lp.mean_all()?.to_scalar::<f32>()? as f64)
    }

    /// Greedy generation of `NEW_TOKENS` per row with the KV cache; returns the sum of the ids
    /// generated (a checksum comparable with PyTorch's).
    fn generate(&self) -> Res<f64> {
        let mut cache = self.infer.new_cache();
        let mut mask = Tensor::ones((BATCH, PROMPT), DType::U8, &Device::Cpu)?;
        let mut logits = self.infer.forward_cached_last(&self.prompt, &mask, &mut cache)?;
        let mut checksum = 0u64;
        let one = Tensor::ones((BATCH, 1), DType::U8, &Device::Cpu)?;
        for step in 0..NEW_TOKENS {
            let next = logits.argmax(D::Minus1)?; // [B]
            checksum += next.to_vec1::<u32>()?.iter().map(|&x| x as u64).sum::<u64>();
            if step + 1 == NEW_TOKENS {
                break;
            }
            mask = Tensor::cat(&[&mask, &one], 1)?;
            logits = self.infer.forward_cached_last(&next.unsqueeze(1)?, &mask, &mut cache)?;
        }
        Ok(checksum as f64)
    }

    /// The train step split into phases (seconds): forward + loss, backward, optimiser update.
    /// Printed by `bench_figures breakdown`, the op-level profile `docs/performance.md` cites.
    fn breakdown(&mut self) -> Res<[f64; 3]> {
        let t0 = Instant::now();
        let loss = self.model.token_logprobs(&self.ids, None)?.mean_all()?.neg()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        self.opt.step(&grads)?;
        let t3 = Instant::now();
        Ok([(t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64(), (t3 - t2).as_secs_f64()])
    }

    fn run(&mut self, what: &str) -> Res<f64> {
        match what {
            "train" => self.train_step(),
            "forward" => self.forward(),
            "generate" => self.generate(),
            other => Err(format!("unknown workload {other:?} (train, forward, generate)").into()),
        }
    }

    /// `n` timed repetitions (after one untimed warm-up the first time a workload is asked for);
    /// JSON with every time and the last result value.
    fn measure(&mut self, what: &str, n: usize) -> Res<String> {
        let mut value = f64::NAN;
        if !self.warm.contains(what) {
            value = self.run(what)?;
            self.warm.insert(what.to_string());
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            value = self.run(what)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let times: Vec<String> = times.iter().map(|t| format!("{t:.6}")).collect();
        Ok(format!("{{\"workload\":\"{what}\",\"times\":[{}],\"value\":{value}}}", times.join(",")))
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), or 0 where unavailable.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Best-of-5 throughput of a 2048 × 2048 × 2048 f32 matmul (GFLOP/s): the machine's practical
/// matmul peak through candle's `gemm` backend at the configured thread count.
fn matmul_peak() -> Res<f64> {
    let n = 2048;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let _ = a.matmul(&b)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        let c = a.matmul(&b)?;
        best = best.min(t0.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

fn parse_n(arg: Option<&String>, default: usize) -> Res<usize> {
    match arg {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("repetition count must be a positive integer, got {s:?}").into()),
        },
    }
}

fn main() -> Res<()> {
    keel_model::ops::tune_cpu_runtime();
    keel_model::ops::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("export") => {
            let dir = args.get(1).ok_or("usage: bench_figures export DIR")?;
            let b = Bench::new()?;
            b.model.save(std::path::Path::new(dir))?;
            println!("{{\"parameters\":{}}}", b.model.num_parameters());
        }
        Some("breakdown") => {
            let n = parse_n(args.get(1), 3)?;
            let mut b = Bench::new()?;
            b.breakdown()?;
            let mut rows = Vec::new();
            for _ in 0..n {
                let [f, bw, o] = b.breakdown()?;
                rows.push(format!("{{\"forward\":{f:.4},\"backward\":{bw:.4},\"optimizer\":{o:.4}}}"));
            }
            println!("[{}]", rows.join(","));
        }
        Some("peak") => println!("{{\"matmul_gflops\":{:.2}}}", matmul_peak()?),
        Some("once") => {
            let what = args.get(1).ok_or("usage: bench_figures once WORKLOAD [N]")?;
            let n = parse_n(args.get(2), 3)?;
            let mut b = Bench::new()?;
            let json = b.measure(what, n)?;
            println!("{},\"peak_rss_bytes\":{}}}", json.trim_end_matches('}'), peak_rss_bytes());
        }
        Some("serve") => {
            let mut b = Bench::new()?;
            let stdin = std::io::stdin();
            let mut out = std::io::stdout().lock();
            writeln!(out, "{{\"ready\":true,\"parameters\":{}}}", b.model.num_parameters())?;
            out.flush()?;
            for line in stdin.lock().lines() {
                let line = line?;
                let mut parts = line.split_whitespace();
                let cmd = parts.next().unwrap_or("");
                if cmd == "quit" || cmd.is_empty() {
                    break;
                }
                let n = parse_n(parts.next().map(|s| s.to_string()).as_ref(), 1)?;
                let reply = b.measure(cmd, n).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
                writeln!(out, "{reply}")?;
                out.flush()?;
            }
        }
        _ => {
            return Err(ModelError::Input(
                "usage: bench_figures export DIR | peak | once WORKLOAD [N] | serve".to_string(),
            )
            .into())
        }
    }
    Ok(())
}
