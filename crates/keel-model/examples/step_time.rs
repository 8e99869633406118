//! Times one training step (forward, token log-prob loss, backward) of the `tiny-8m` performance
//! reference (8.4M parameters, batch 16 × 128, vocab 4096) with the fused kernels on and off.
//!
//! Why: DESIGN.md sets the CPU target against PyTorch (0.66–0.77 s/step on the reference
//! machine); this is the number to watch when changing kernels or layouts.
//!
//! Run: `cargo run --release -p keel-model --example step_time [steps]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use keel_model::{ops, CausalLm, ModelConfig, ModelError};

fn main() -> Result<(), ModelError> {
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let cfg = ModelConfig::preset("tiny-8m", 4096)?;
    let model = CausalLm::new(&cfg, 0, &Device::Cpu, DType::F32)?;
    println!("tiny-8m: {} parameters", model.num_parameters());
    let (b, t) = (16usize, 128usize);
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7919) % 4096) as u32).collect();
    let x = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
    for fused in [true, false] {
        ops::set_fused_enabled(fused);
        let mut times = Vec::new();
        for _ in 0..steps + 1 {
            let t0 = Instant::now();
            let loss = model.token_logprobs(&x, None)?.mean_all()?.neg()?;
            let grads = loss.backward()?;
            times.push(t0.elapsed().as_secs_f64());
            drop(grads);
        }
        times.remove(0); // warm-up
        times.sort_by(|a, b| a.total_cmp(b));
        println!("fused={fused}: median {:.3} s/step (min {:.3})", times[times.len() / 2], times[0]);
    }
    ops::set_fused_enabled(true);
    Ok(())
}
