//! Tokenizer wrapper and byte-level BPE training: round trips, determinism, the Hugging Face
//! on-disk layout, special-token resolution and file-naming errors.

use std::path::PathBuf;

use keel_model::tokenizer::CHATML_SPECIAL_TOKENS;
use keel_model::{train_bpe, SpecialTokens, Tokenizer, TokenizerError, CHATML_TEMPLATE};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-io-tok-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small synthetic corpus of the kind synthetic task worlds produce.
fn corpus() -> Vec<String> {
    let names = ["Alice", "Bob", "Carol", "Dave"];
    let mut v = Vec::new();
    for a in 0..40u32 {
        for b in [3u32, 7, 11] {
            let who = names[(a as usize + b as usize) % names.len()];
            v.push(format!("{who} has {a} apples and buys {b} more. How many apples does {who} have now? The answer is {}.", a + b));
        }
    }
    v.push("fn main() { println!(\"hello, world\"); }".into());
    v
}

const SAMPLES: [&str; 7] = [
    "Alice has 12 apples.",
    "héllo wörld — naïve café",
    "emoji 🚀🔥 and CJK 漢字",
    "fn add(a: i32, b: i32) -> i32 { a + b }\n\tlet x = 3.14159;",
    "   leading and trailing spaces   ",
    "1234567890 + 0.5 = 1234567890.5",
    "",
];

#[test]
fn tokenizer_bpe_training_is_deterministic() {
    let texts = corpus();
    let a = train_bpe(&texts, 400, &["<tool>"]).unwrap();
    let b = train_bpe(&texts, 400, &["<tool>"]).unwrap();
    assert_eq!(a.tokenizer_json().unwrap(), b.tokenizer_json().unwrap());
    // vocab_size is an upper bound: merges stop when no pair occurs twice.
    assert!(
        a.vocab_size() > 300 && a.vocab_size() <= 400,
        "{}",
        a.vocab_size()
    );
    // Identical across processes too (hash maps inside the trainer are randomly seeded per
    // process). Changes only if the pinned `tokenizers` version changes its trainer or JSON.
    assert_eq!(
        keel_core::sha256_bytes(a.tokenizer_json().unwrap().as_bytes()),
        "95091e3d8b5fa65f650ed6c04d1cb7611ee0ed64e5f5e5d8c3b7eaaa31474c1f"
    );
    for s in SAMPLES {
        assert_eq!(
            a.encode(s, false).unwrap(),
            b.encode(s, false).unwrap(),
            "{s:?}"
        );
    }
    // A different corpus learns different merges.
    let other: Vec<String> = texts.iter().map(|t| t.to_uppercase()).collect();
    let c = train_bpe(&other, 400, &["<tool>"]).unwrap();
    assert_ne!(a.tokenizer_json().unwrap(), c.tokenizer_json().unwrap());
}

#[test]
fn tokenizer_trained_layout_and_special_tokens() {
    let tok = train_bpe(&corpus(), 400, &["<tool>", "<|im_end|>"]).unwrap();
    // ChatML tokens first (duplicates ignored), then the caller's.
    for (i, t) in CHATML_SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_to_id(t), Some(i as u32), "{t}");
    }
    assert_eq!(tok.token_to_id("<tool>"), Some(3));
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.pad_id(), Some(0));
    assert_eq!(tok.stop_ids(), vec![2]);
    assert_eq!(tok.chat_template(), Some(CHATML_TEMPLATE));
    // Special tokens are atomic and dropped by skip_special decoding.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|im_start|>user\nHi<|im_end|>"
    );
    // Frequent words of the corpus became single tokens.
    assert_eq!(tok.encode(" apples", false).unwrap().len(), 1);
    assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
}

#[test]
fn tokenizer_round_trips_text() {
    let tok = train_bpe(&corpus(), 400, &[]).unwrap();
    for s in SAMPLES {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            s,
            "round trip of {s:?} via {ids:?}"
        );
    }
    // Byte-level: unseen characters still encode (as bytes), never to an unknown token.
    let ids = tok.encode("🚀", false).unwrap();
    assert_eq!(ids.len(), 4, "one token per UTF-8 byte of an unseen emoji");
}

#[test]
fn tokenizer_save_and_load_hugging_face_layout() {
    let dir = scratch("save");
    let tok = train_bpe(&corpus(), 400, &[]).unwrap();
    let [tj, tc] = tok.save(&dir).unwrap();
    assert_eq!(tj, dir.join("tokenizer.json"));
    assert_eq!(tc, dir.join("tokenizer_config.json"));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert_eq!(cfg["bos_token"], "<|im_start|>");
    assert_eq!(cfg["pad_token"], "<|endoftext|>");
    assert_eq!(cfg["chat_template"], CHATML_TEMPLATE);
    assert_eq!(cfg["added_tokens_decoder"]["2"]["content"], "<|im_end|>");
    assert_eq!(cfg["added_tokens_decoder"]["2"]["special"], true);

    let back = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(back.vocab_size(), tok.vocab_size());
    assert_eq!(
        (back.bos_id(), back.eos_id(), back.pad_id()),
        (Some(1), Some(2), Some(0))
    );
    assert_eq!(back.chat_template(), Some(CHATML_TEMPLATE));
    for s in SAMPLES {
        assert_eq!(
            back.encode(s, false).unwrap(),
            tok.encode(s, false).unwrap(),
            "{s:?}"
        );
    }
    // A lone tokenizer.json next to its config loads the same way.
    let lone = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(lone.eos_id(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_special_ids_from_config_json() {
    let dir = scratch("config");
    let tok = train_bpe(&corpus(), 400, &["<|eot_id|>", "<|eom_id|>"]).unwrap();
    tok.save(&dir).unwrap();
    // tokenizer_config.json without special tokens: config.json ids fill them in, and an id list
    // (Llama 3.1 style) makes every listed id a stop id.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"chat_template": "{{ messages[0]['content'] }}"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": [3, 4, 2], "pad_token_id": 0}"#,
    )
    .unwrap();
    let t = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(t.eos_id(), Some(3));
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.pad_id(), Some(0));
    assert_eq!(t.stop_ids(), vec![2, 3, 4]);

    // Replacing special tokens checks them against the vocabulary.
    let t2 = t
        .clone()
        .with_special_tokens(SpecialTokens {
            eos: Some("<|eom_id|>".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(t2.eos_id(), Some(4));
    assert_eq!(t2.pad_id(), Some(4), "PAD falls back to EOS");
    let err = t
        .with_special_tokens(SpecialTokens {
            bos: Some("<nope>".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnknownSpecialToken { role: "bos", .. }),
        "{err}"
    );

    // Out-of-range ids name the problem.
    std::fs::write(dir.join("config.json"), r#"{"eos_token_id": 999999}"#).unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("999999") && err.contains("tokenizer.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_errors_name_the_file() {
    let dir = scratch("errors");
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains(&dir.join("tokenizer.json").display().to_string()),
        "{err}"
    );

    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    train_bpe(&corpus(), 300, &[]).unwrap().save(&dir).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{ broken").unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");

    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|not_there|>"}"#,
    )
    .unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("<|not_there|>") && err.contains("eos"),
        "{err}"
    );

    let err = train_bpe(&corpus(), 100, &[]).unwrap_err().to_string();
    assert!(err.contains("vocab_size 100"), "{err}");
    let empty: [&str; 0] = [];
    assert!(train_bpe(&empty, 400, &[]).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// A vocabulary past the documented maximum is an error naming the limit, not a panic or an
/// allocation abort in the trainer; the maximum itself is accepted (training stops early).
#[test]
fn tokenizer_training_refuses_a_vocabulary_past_the_maximum() {
    for size in [keel_model::MAX_BPE_VOCAB_SIZE + 1, usize::MAX] {
        let e = train_bpe(&corpus(), size, &[]).expect_err("refused");
        assert!(matches!(e, TokenizerError::Train(_)), "{e}");
        assert!(e.to_string().contains(&format!("vocab_size {size} is above the maximum 1048576")), "{e}");
    }
    let tok = train_bpe(&corpus(), keel_model::MAX_BPE_VOCAB_SIZE, &[]).unwrap();
    assert!(tok.vocab_size() < 2000, "training stops when no pair repeats: {}", tok.vocab_size());
}
