//! Rebuilding a Hugging Face `tokenizer.json` from the vocabulary that llama.cpp stores in GGUF
//! metadata (`tokenizer.ggml.*`).
//!
//! llama.cpp keeps only the tokens, merges, token types and a pre-tokenizer *name*
//! (`tokenizer.ggml.pre`); the splitting regexes live in its C++ code. This module maps each
//! known name to the pipeline Hugging Face uses for the same model family, so that the imported
//! tokenizer gives the ids the model was trained with.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::{json, Map, Value};

use super::{meta_bool, meta_str, meta_u64, GgufError};

/// Llama 3's split regex (tokenizer.json of Meta-Llama-3; llama.cpp pre type `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (single digits; llama.cpp pre type `qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The tokenizer documents reconstructed from GGUF metadata.
pub(crate) struct GgufVocab {
    /// Hugging Face `tokenizer.json`.
    pub tokenizer_json: Value,
    /// Hugging Face `tokenizer_config.json` (special tokens, chat template).
    pub tokenizer_config: Value,
    /// Notes about approximations (unknown pre-tokenizer names, duplicate tokens).
    pub warnings: Vec<String>,
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// (normalizer, pre_tokenizer, ignore_merges) for a llama.cpp pre-tokenizer name, mirroring the
/// tokenizer.json files of the model families llama.cpp's names stand for.
fn pipeline_for(pre: &str, warnings: &mut Vec<String>) -> (Value, Value, bool) {
    match pre {
        // StarCoder-family tokenizers (SmolLM, SmolLM2): every digit is its own piece, then GPT-2.
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(false, true, true),
            ]}),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false, true, false)]}),
            true,
        ),
        "qwen2" | "stablelm2" | "hunyuan" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false, true, false)]}),
            false,
        ),
        "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" | "trillion" => {
            (Value::Null, byte_level(false, true, true), false)
        }
        other => {
            warnings.push(format!(
                "unknown tokenizer.ggml.pre `{other}`: using the GPT-2 byte-level pre-tokenizer; check tokenization against the original tokenizer.json"
            ));
            (Value::Null, byte_level(false, true, true), false)
        }
    }
}

fn string_array<'a>(
    md: &'a HashMap<String, GgufValue>,
    key: &str,
) -> Result<Vec<&'a str>, GgufError> {
    let arr = md
        .get(key)
        .ok_or_else(|| GgufError::Metadata {
            key: key.to_string(),
            reason: "missing".into(),
        })?
        .to_vec()
        .map_err(|_| GgufError::Metadata {
            key: key.to_string(),
            reason: "not an array".into(),
        })?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.to_string()
                .map(String::as_str)
                .map_err(|_| GgufError::Metadata {
                    key: key.to_string(),
                    reason: format!("element {i} is not a string"),
                })
        })
        .collect()
}

fn int_array(md: &HashMap<String, GgufValue>, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let arr = v.to_vec().map_err(|_| GgufError::Metadata {
        key: key.to_string(),
        reason: "not an array".into(),
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            super::value_i64(v).ok_or_else(|| GgufError::Metadata {
                key: key.to_string(),
                reason: format!("element {i} is not an integer"),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Builds tokenizer.json and tokenizer_config.json from `tokenizer.ggml.*` metadata.
/// Only `tokenizer.ggml.model = "gpt2"` (byte-level BPE) is supported.
pub(crate) fn vocab_from_metadata(
    md: &HashMap<String, GgufValue>,
    context_length: Option<u64>,
) -> Result<GgufVocab, GgufError> {
    let model = meta_str(md, "tokenizer.ggml.model")?.unwrap_or_default();
    if model != "gpt2" {
        return Err(GgufError::Unsupported(format!(
            "tokenizer.ggml.model = `{model}`: only byte-level BPE (`gpt2`) vocabularies can be imported; \
             place the original tokenizer.json next to the weights instead"
        )));
    }
    let mut warnings = Vec::new();
    let tokens = string_array(md, "tokenizer.ggml.tokens")?;
    let merges = string_array(md, "tokenizer.ggml.merges")?;
    let types = int_array(md, "tokenizer.ggml.token_type")?;
    if let Some(t) = &types {
        if t.len() != tokens.len() {
            return Err(GgufError::Metadata {
                key: "tokenizer.ggml.token_type".into(),
                reason: format!("{} entries for {} tokens", t.len(), tokens.len()),
            });
        }
    }

    let mut vocab = Map::new();
    let mut duplicates = 0usize;
    for (id, tok) in tokens.iter().enumerate() {
        if vocab.contains_key(*tok) {
            duplicates += 1;
            continue;
        }
        vocab.insert(tok.to_string(), json!(id));
    }
    if duplicates > 0 {
        warnings.push(format!("{duplicates} duplicate token strings in tokenizer.ggml.tokens; the first id of each was kept"));
    }

    let merge_pairs = merge_pairs(&merges)?;

    let (added_tokens, added_decoder) = added_tokens(types.as_deref(), &tokens);

    let pre = meta_str(md, "tokenizer.ggml.pre")?.unwrap_or("default");
    let (normalizer, pre_tokenizer, ignore_merges) = pipeline_for(pre, &mut warnings);

    let token_at = |key: &str| -> Result<Option<String>, GgufError> {
        match meta_u64(md, key)? {
            None => Ok(None),
            Some(id) => tokens
                .get(id as usize)
                .map(|t| Some(t.to_string()))
                .ok_or_else(|| GgufError::Metadata {
                    key: key.to_string(),
                    reason: format!(
                        "id {id} is outside the vocabulary of {} tokens",
                        tokens.len()
                    ),
                }),
        }
    };
    let bos = token_at("tokenizer.ggml.bos_token_id")?;
    let eos = token_at("tokenizer.ggml.eos_token_id")?;
    let pad = token_at("tokenizer.ggml.padding_token_id")?;
    let unk = token_at("tokenizer.ggml.unknown_token_id")?;
    let add_bos = meta_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);

    let post_processor = match (&bos, add_bos) {
        (Some(bos), true) => {
            let bos_id = vocab.get(bos).cloned().unwrap_or(Value::Null);
            json!({"type": "Sequence", "processors": [
                byte_level(true, false, true),
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {bos.as_str(): {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
            ]})
        }
        _ => byte_level(true, false, true),
    };

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true, true, true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merge_pairs,
        }
    });

    let cfg = tokenizer_config(md, add_bos, added_decoder, [&bos, &eos, &pad, &unk], context_length)?;

    Ok(GgufVocab {
        tokenizer_json,
        tokenizer_config: cfg,
        warnings,
    })
}

/// `tokenizer.ggml.merges` (`"a b"` strings) as tokenizer.json merge pairs.
fn merge_pairs(merges: &[&str]) -> Result<Vec<Value>, GgufError> {
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let mut parts = m.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merge_pairs.push(json!([a, b]))
            }
            _ => {
                return Err(GgufError::Metadata {
                    key: "tokenizer.ggml.merges".into(),
                    reason: format!("merge {i} `{m}` is not two space-separated tokens"),
                })
            }
        }
    }
    Ok(merge_pairs)
}

/// The control and user-defined tokens (by `tokenizer.ggml.token_type`) as tokenizer.json
/// `added_tokens` and tokenizer_config.json `added_tokens_decoder`.
fn added_tokens(types: Option<&[i64]>, tokens: &[&str]) -> (Vec<Value>, Map<String, Value>) {
    let mut added_tokens = Vec::new();
    let mut added_decoder = Map::new();
    if let Some(types) = types {
        for (id, (&ty, tok)) in types.iter().zip(tokens.iter()).enumerate() {
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                let special = ty == TOKEN_TYPE_CONTROL;
                added_tokens.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": !special, "special": special,
                }));
                added_decoder.insert(
                    id.to_string(),
                    json!({"content": tok, "lstrip": false, "normalized": !special, "rstrip": false, "single_word": false, "special": special}),
                );
            }
        }
    }
    (added_tokens, added_decoder)
}

/// tokenizer_config.json: BOS/EOS flags, added tokens, the special tokens (`bos, eos, pad, unk`),
/// the chat template and the context length.
fn tokenizer_config(
    md: &HashMap<String, GgufValue>,
    add_bos: bool,
    added_decoder: Map<String, Value>,
    [bos, eos, pad, unk]: [&Option<String>; 4],
    context_length: Option<u64>,
) -> Result<Value, GgufError> {
    let mut cfg = Map::new();
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert(
        "add_eos_token".into(),
        json!(meta_bool(md, "tokenizer.ggml.add_eos_token")?.unwrap_or(false)),
    );
    cfg.insert("added_tokens_decoder".into(), Value::Object(added_decoder));
    for (key, v) in [("bos_token", bos), ("eos_token", eos), ("pad_token", pad), ("unk_token", unk)] {
        if let Some(t) = v {
            cfg.insert(key.into(), json!(t));
        }
    }
    if let Some(t) = meta_str(md, "tokenizer.chat_template")? {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(n) = context_length {
        cfg.insert("model_max_length".into(), json!(n));
    }
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Value::Object(cfg))
}
