//! A bounded-time fuzz harness (issue 19 item 6) over the model-file readers a user's files reach:
//! the safetensors reader (random and mutated files), config.json (mutated fields) and the chat
//! template path (random templates built from Jinja fragments, random conversations). Each target
//! runs a fixed number of deterministic cases (seeded ChaCha, no failure files), so the harness
//! takes seconds in CI and a failure reproduces; a case passes when the reader returns (`Ok` or a
//! clear `Err`) in bounded time: no panic, hang or abort. The GGUF reader's harness is in
//! `io_gguf.rs`, next to the GGUF fixture it mutates.

mod common;

use std::cell::Cell;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use keel_core::{Message, Role};
use keel_model::{ChatTemplate, ModelConfig};
use proptest::prelude::*;
use common::fuzz::{runner, within};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The safetensors reader (through `read_checkpoint_tensors` and `CausalLm::load`) on 256
/// mutations of a tiny model's checkpoint: every case returns, none panics or aborts.
#[test]
fn fuzz_safetensors_reader() {
    let dir = scratch("safetensors");
    let cfg = common::tiny_config("llama", true);
    let model = common::random_model(&cfg, 1, DType::F32);
    model.save(&dir).unwrap();
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let (ok, refused) = (Cell::new(0), Cell::new(0));
    runner(256)
        .run(&common::fuzz::mutation(), |m| {
            std::fs::write(dir.join("model.safetensors"), common::fuzz::mutate(&good, &m, header)).unwrap();
            let read = within(Duration::from_secs(5), "read_checkpoint_tensors", || {
                keel_model::weights::read_checkpoint_tensors(&dir, &Device::Cpu)
            })?;
            let loaded =
                within(Duration::from_secs(5), "CausalLm::load", || keel_model::CausalLm::load(&dir, &Device::Cpu, DType::F32))?;
            // A checkpoint the reader refuses never loads as a model.
            prop_assert!(read.is_ok() || loaded.is_err());
            match loaded {
                Ok(m) => {
                    // Whatever loaded must run.
                    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
                    prop_assert!(m.forward(&ids, None).is_ok());
                    ok.set(ok.get() + 1);
                }
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    refused.set(refused.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    let (ok, refused) = (ok.get(), refused.get());
    assert!(refused > 100, "most mutations must be refused: {refused} refused, {ok} loaded");
    std::fs::remove_dir_all(&dir).ok();
}

/// A JSON value for a config field: the kinds of number and non-number a user's file can hold.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|x| serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)),
        (0u64..70).prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::json!({"rope_type": "llama3", "factor": 0.0})),
        Just(serde_json::json!([1, -2, "x"])),
    ]
}

const CONFIG_FIELDS: [&str; 16] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "eos_token_id",
    "model_type",
    "text_config",
];

/// config.json with 1–4 fields replaced by arbitrary values, 512 cases: parsing returns in
/// bounded time, and whatever parses is small enough to build (it passed the size and memory
/// checks), which the case then does when it is tiny.
#[test]
fn fuzz_config_json() {
    let base = common::tiny_config("qwen3", false).to_json();
    let edits = prop::collection::vec((0..CONFIG_FIELDS.len(), json_value()), 1..5);
    runner(512)
        .run(&edits, |edits| {
            let mut v = base.clone();
            for (f, x) in &edits {
                v[CONFIG_FIELDS[*f]] = x.clone();
            }
            let parsed = within(Duration::from_millis(200), "ModelConfig::from_json", || ModelConfig::from_json(&v))?;
            if let Ok(cfg) = parsed {
                prop_assert!(cfg.validate().is_ok());
                if cfg.num_parameters() < 2_000_000 && cfg.max_position_embeddings < 1 << 20 {
                    let m = keel_model::CausalLm::new(&cfg, 0, &Device::Cpu, DType::F32);
                    prop_assert!(m.is_ok(), "{:?}", m.err());
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Pieces of Jinja a chat template is made of, valid and broken, including loops over ranges and
/// the conversation (nested, they reach the fuel limit) and output that repeats messages.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{% for m in messages %}".to_string()),
        Just("{% endfor %}".to_string()),
        (0u32..2000).prop_map(|n| format!("{{% for i in range({n}) %}}")),
        Just("{{ m.content }}".to_string()),
        Just("{{ m['role'] | upper }}".to_string()),
        Just("{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".to_string()),
        Just("{% if m.role == 'user' %}".to_string()),
        Just("{% else %}".to_string()),
        Just("{% endif %}".to_string()),
        Just("{{ bos_token }}{{ eos_token }}".to_string()),
        Just("{{ raise_exception('bad') }}".to_string()),
        Just("{{ m.content.strip() * 3 }}".to_string()),
        Just("{% set x = messages | length %}{{ x }}".to_string()),
        Just("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}".to_string()),
        Just("{{ messages[99].content }}".to_string()),
        Just("{{ (m.content ~ m.content) | length }}".to_string()),
        "[a-z {}%#|()'.\n]{0,12}",
    ]
}

/// Well-formed templates: output fragments nested in `for` loops (over the conversation or a
/// range, rarely a long one) and `if`/`else`, up to four levels deep, so that rendering runs
/// (rather than failing to compile) and sometimes multiplies work until the fuel runs out.
fn structured() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("{{ m.content }}".to_string()),
        Just("{{ i }}".to_string()),
        Just("{{ m.role }}: ".to_string()),
        Just("{{ eos_token }}".to_string()),
        "[a-z <>|\n]{0,8}",
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        let body = prop::collection::vec(inner, 1..4).prop_map(|v| v.concat());
        let n = prop_oneof![19 => 0u32..50, 1 => 1000u32..3000];
        prop_oneof![
            body.clone().prop_map(|b| format!("{{% for m in messages %}}{b}{{% endfor %}}")),
            (n, body.clone()).prop_map(|(n, b)| format!("{{% for i in range({n}) %}}{b}{{% endfor %}}")),
            (body.clone(), body).prop_map(|(a, b)| format!("{{% if m is defined and m.role == 'user' %}}{a}{{% else %}}{b}{{% endif %}}")),
        ]
    })
}

fn conversation() -> impl Strategy<Value = Vec<Message>> {
    let role = prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)];
    prop::collection::vec((role, "[ -~]{0,64}"), 0..6)
        .prop_map(|ms| ms.into_iter().map(|(r, c)| Message::new(r, c)).collect())
}

/// 384 random templates ([`fragment`] soup or [`structured`]) on random conversations: compiling and rendering
/// return `Ok` or a clear error, each in bounded time (the fuel limit stops nested loops in about
/// a second), never a panic, hang or runaway allocation.
#[test]
fn fuzz_chat_templates() {
    let source = prop_oneof![prop::collection::vec(fragment(), 0..10).prop_map(|v| v.concat()), structured()];
    let case = (source, conversation(), any::<bool>());
    let (rendered, refused) = (Cell::new(0), Cell::new(0));
    runner(384)
        .run(&case, |(source, messages, gen)| {
            let compiled = within(Duration::from_secs(1), "compiling", || ChatTemplate::new(source.clone(), "fuzz.jinja", "<s>", "</s>"))?;
            let Ok(t) = compiled else {
                refused.set(refused.get() + 1);
                return Ok(());
            };
            let out = within(Duration::from_secs(5), "rendering", || t.render(&messages, gen))?;
            match out {
                Ok(text) => {
                    prop_assert!(text.len() <= keel_model::chat::max_render_bytes(&messages));
                    rendered.set(rendered.get() + 1);
                }
                Err(e) => {
                    prop_assert!(e.to_string().contains("fuzz.jinja"), "{e}");
                    refused.set(refused.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    let (rendered, refused) = (rendered.get(), refused.get());
    println!("{rendered} templates rendered, {refused} refused");
    assert!(rendered > 50 && refused > 50, "{rendered} rendered, {refused} refused");
}
