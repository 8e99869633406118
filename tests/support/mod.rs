//! Shared by the end-to-end tests: where the `keel` binary is.
//!
//! These tests live in the workspace-root package `keel-e2e`, so cargo's `CARGO_BIN_EXE_keel`
//! (set only for a package's own binaries) is not available. The binary is found next to this
//! test executable instead: cargo puts test executables in `<target>/<profile>/deps/` and binaries
//! in `<target>/<profile>/`, for whatever target directory (`CARGO_TARGET_DIR`, `--target-dir`,
//! a `--target` triple) the build used. `cargo test --workspace` builds it (keel-cli has an
//! integration test, so cargo builds its binary); `cargo test -p keel-e2e` alone does not.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The path of the `keel` binary beside this test executable; panics with the command that
/// builds it when it is not there.
pub fn keel_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable knows its own path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test executable lies in <target>/<profile>/deps");
    let bin = profile_dir.join(format!("keel{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the `keel` binary is not at {}: the end-to-end tests run it as a separate process. Build it \
         with `cargo build --release -p keel-cli` (same target directory), or run the tests with \
         `cargo test --release --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// A file of the repository, by its path from the workspace root (where this package lives).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Panics, naming the command that fetches them, unless every dataset in `names` (catalogue
/// names, `keel data list`) is in the dataset cache the `keel` binary will read (`KEEL_DATA_DIR`,
/// which .cargo/config.toml sets for cargo's test runs).
pub fn require_datasets(names: &[&str]) {
    let hint = "run `bash scripts/fetch-test-data.sh datasets` (it fetches them, or links ../shared/datasets when that folder exists)";
    let cache = keel_data::Cache::from_env().unwrap_or_else(|e| panic!("{e}; {hint}"));
    let catalog = keel_data::Catalog::embedded().expect("the embedded dataset catalogue parses");
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !catalog.get(n).is_ok_and(|m| cache.path_for(m).is_file()))
        .collect();
    assert!(
        missing.is_empty(),
        "datasets {missing:?} are not in the dataset cache {} (KEEL_DATA_DIR): {hint}",
        cache.root().display()
    );
}
