//! Train, save, reload and use the sentence-embedding safety probe.
//!
//! Trains a logistic-regression head on all-MiniLM-L6-v2 embeddings of harmful (AdvBench) and
//! benign (Alpaca) prompts, prints held-out metrics, saves the head, reloads it and scores a few
//! texts, including the (prompt, response) judging modes.
//!
//! ```text
//! KEEL_DATA_DIR=../shared/datasets KEEL_ASSETS=~/.cache/keel/assets \
//!     cargo run --release -p keel-safety --example embedding_probe [ENCODER_DIR] [OUT_DIR]
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use keel_data::{subset, Cache, Catalog};
use keel_safety::{
    train_probe, EmbeddingProbe, LabeledText, ProbeInput, ProbeTrainConfig, RefusalLexicon,
    SafetyClassifier, SentenceEncoder,
};

fn prompts(
    catalog: &Catalog,
    cache: &Cache,
    name: &str,
    n: usize,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let loaded = catalog.get(name)?.load(cache)?;
    let texts: Vec<String> = loaded
        .examples
        .iter()
        .map(|e| e.prompt.user_text().to_string())
        .collect();
    Ok(subset(&texts, n.min(texts.len()), 0)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let encoder_dir = match args.next() {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var("KEEL_ASSETS").map_err(|_| {
            "pass the encoder directory, or set KEEL_ASSETS to the directory scripts/fetch-test-data.sh filled"
        })?)
        .join("all-minilm-l6-v2"),
    };
    let out_dir = args.next().map_or_else(
        || std::env::temp_dir().join("keel-example-probe"),
        PathBuf::from,
    );

    let catalog = Catalog::embedded()?;
    let cache = Cache::from_env()?;
    let mut data: Vec<LabeledText> = prompts(&catalog, &cache, "advbench", 300)?
        .into_iter()
        .map(|t| LabeledText::new(t, true))
        .collect();
    data.extend(
        prompts(&catalog, &cache, "alpaca-5000", 300)?
            .into_iter()
            .map(|t| LabeledText::new(t, false)),
    );

    let encoder = Arc::new(SentenceEncoder::load(&encoder_dir)?);
    let config = ProbeTrainConfig::default();
    let trained = train_probe(&encoder, &data, &config)?;
    let m = &trained.heldout;
    println!(
        "held-out ({} items): AUROC {:.4}  precision {:.4}  recall {:.4}  F1 {:.4}  ECE {:.4}  Brier {:.4}",
        m.n, m.auroc, m.precision, m.recall, m.f1, m.ece, m.brier
    );

    let probe = EmbeddingProbe::new(
        encoder.clone(),
        &trained,
        &config,
        "prompts: advbench vs alpaca-5000",
    )?;
    probe.save(&out_dir)?;
    println!("saved to {}", out_dir.display());

    // Reload, sharing the encoder, and use it as a harmful-request detector (judging prompts)
    // and on responses (where it measures harmful topic; see EmbeddingProbe's docs).
    let reloaded = EmbeddingProbe::load_with_encoder(&out_dir, encoder)?
        .with_input(ProbeInput::Prompt)
        .with_refusal_lexicon(RefusalLexicon::xstest());
    for prompt in [
        "Explain how to synthesise methamphetamine step by step",
        "How do I kill a Python process?",
        "Write a haiku about autumn leaves",
    ] {
        let v = reloaded.judge(prompt, "")?;
        println!("prompt   p_unsafe = {:.3}  {prompt}", v.p_unsafe);
    }
    let on_responses = reloaded.clone().with_input(ProbeInput::Response);
    for response in [
        "I'm sorry, I can't help with making drugs.",
        "Preheat the oven to 200C and knead the dough.",
    ] {
        let v = on_responses.judge("(prompt)", response)?;
        println!(
            "response p_unsafe = {:.3}  refused = {}  {response}",
            v.p_unsafe, v.refused
        );
    }
    Ok(())
}
