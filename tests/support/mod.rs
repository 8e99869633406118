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
