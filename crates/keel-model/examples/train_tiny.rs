//! Trains the `tiny-1m` preset from scratch on a toy next-token task with `candle_nn::AdamW`.
//!
//! Why: the smallest end-to-end demonstration that gradients reach every weight of Keel's decoder
//! and that an optimiser written against candle `Var`s works with `CausalLm::trainable_vars`.
//! The task (each token is the previous one plus a per-sequence stride, modulo the vocabulary)
//! is learnable in a few dozen steps, so the loss must fall visibly.
//!
//! Run: `cargo run --release -p keel-model --example train_tiny`

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use keel_model::{CausalLm, ModelConfig, ModelError};

fn batch(step: usize, b: usize, t: usize, vocab: u32) -> Result<Tensor, ModelError> {
    let mut ids = Vec::with_capacity(b * t);
    for i in 0..b {
        let start = ((step * 31 + i * 17) % vocab as usize) as u32;
        let stride = 1 + (i as u32 % 3);
        ids.extend((0..t as u32).map(|k| (start + k * stride) % vocab));
    }
    Ok(Tensor::from_vec(ids, (b, t), &Device::Cpu)?)
}

fn main() -> Result<(), ModelError> {
    let vocab = 64;
    let cfg = ModelConfig::preset("tiny-1m", vocab)?;
    let model = CausalLm::new(&cfg, 42, &Device::Cpu, DType::F32)?;
    println!("tiny-1m with vocab {vocab}: {} parameters", model.num_parameters());
    let params = ParamsAdamW { lr: 3e-3, weight_decay: 0.0, ..Default::default() };
    let mut opt = AdamW::new(model.trainable_vars(), params)?;
    let (mut first, mut last) = (None, 0f32);
    for step in 0..40 {
        let x = batch(step, 8, 32, vocab as u32)?;
        let loss = model.token_logprobs(&x, None)?.mean_all()?.neg()?;
        opt.backward_step(&loss)?;
        last = loss.to_scalar()?;
        first.get_or_insert(last);
        if step % 5 == 0 || step == 39 {
            println!("step {step:>2}  loss {last:.4}");
        }
    }
    let first = first.unwrap_or(last);
    println!("loss {first:.4} -> {last:.4} (uniform would be {:.4})", (vocab as f32).ln());
    if last >= first * 0.5 {
        return Err(ModelError::Input(format!("loss did not fall enough: {first} -> {last}")));
    }
    Ok(())
}
