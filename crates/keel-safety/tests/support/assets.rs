//! Shared by the tests that need real model files: where they are, failing loudly when the
//! variable is unset (a silently skipped parity test would hide a broken encoder).

#![allow(dead_code)]

use std::path::PathBuf;

/// `$KEEL_ASSETS`, or a panic that says how to set it.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("KEEL_ASSETS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => panic!(
            "KEEL_ASSETS is not set: this test needs real model files (all-MiniLM-L6-v2, SmolLM2-135M-Instruct \
             GGUF). Run `bash scripts/fetch-test-data.sh` and run the tests with cargo (it sets KEEL_ASSETS)"
        ),
    }
}

/// The all-MiniLM-L6-v2 directory under `$KEEL_ASSETS`, checked to exist.
pub fn minilm_dir() -> PathBuf {
    let d = assets_dir().join("all-minilm-l6-v2");
    assert!(
        d.join("model.safetensors").is_file(),
        "{} has no model.safetensors; run `bash scripts/fetch-test-data.sh` to fetch it",
        d.display()
    );
    d
}

/// The SmolLM2-135M-Instruct GGUF under `$KEEL_ASSETS`, checked to exist.
pub fn smollm2_gguf() -> PathBuf {
    let p = assets_dir()
        .join("smollm2-135m-instruct")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} does not exist; run `bash scripts/fetch-test-data.sh` to fetch it",
        p.display()
    );
    p
}
