//! Converts a llama.cpp GGUF checkpoint into a Hugging Face model directory and shows its chat
//! formatting, using keel-model's I/O half on its own (no training, no pipeline).
//!
//! ```text
//! cargo run --release -p keel-model --example io_import_gguf -- \
//!     "$KEEL_ASSETS/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" /tmp/smollm2-hf \
//!     "What is the capital of France?"
//! ```
//!
//! The first argument is any model reference (`path/to/model.gguf`, a directory holding one
//! GGUF file, ...); the output directory then holds model.safetensors, config.json,
//! tokenizer.json and tokenizer_config.json, loadable by Keel and by transformers alike.

use std::path::PathBuf;
use std::process::ExitCode;

use keel_core::Prompt;
use keel_model::{import_gguf, ChatTemplate, ModelSource, ResolvedModel, Tokenizer};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(reference), Some(out_dir)) = (args.first(), args.get(1)) else {
        return Err(
            "usage: io_import_gguf <model.gguf | model reference> <out_dir> [prompt]".into(),
        );
    };
    let prompt = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "What is the capital of France?".to_string());

    let source = ModelSource::parse(reference)?;
    let gguf = match source.resolve()? {
        ResolvedModel::Gguf(p) => p,
        other => {
            return Err(format!("{source} resolves to {other:?}, which is not a GGUF file").into())
        }
    };
    let out = PathBuf::from(out_dir);
    let started = std::time::Instant::now();
    let report = import_gguf(&gguf, &out)?;
    println!("imported in {:.2}s", started.elapsed().as_secs_f64());
    println!("{}", serde_json::to_string_pretty(&report)?);

    let tokenizer = Tokenizer::from_dir(&out)?;
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;
    let text = template.format_prompt(&Prompt::Text(prompt), None, false)?;
    let ids = tokenizer.encode(&text, false)?;
    println!("rendered prompt ({} tokens):\n{text}", ids.len());
    println!("ids: {ids:?}");
    println!("stop ids: {:?}", tokenizer.stop_ids());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
