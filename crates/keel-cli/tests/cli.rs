//! The `keel` command line itself: exit codes and what `keel validate` prints for a valid and an
//! invalid pipeline. The cross-crate end-to-end tests (quickstart, resume, learning, micro-batches,
//! paper dry runs) are in the workspace's `tests/` folder (package `keel-e2e`); this file also makes
//! `cargo test --workspace` build the `keel` binary they run (cargo builds a package's binaries for
//! its integration tests only).

use std::path::Path;
use std::process::Command;

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).args(args).output().expect("the keel binary runs")
}

#[test]
fn validate_reports_a_valid_pipeline_and_a_misspelled_stage_kind() {
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/quickstart.yaml");
    let quickstart = quickstart.to_str().expect("utf-8 path");
    let ok = keel(&["validate", quickstart]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("quickstart.yaml: valid (") && stdout.contains("stages, config hash "), "{stdout}");

    let dir = std::env::temp_dir().join(format!("keel-cli-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: bad\nseed: 1\nstages:\n  world: {use: synthetic_wrld}\n").expect("write");
    let out = keel(&["validate", quickstart, bad.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit code 2 is "the input is wrong" (1 is a failed run).
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml:4:"), "the error names the file and line: {stderr}");
    assert!(stderr.contains("synthetic_world"), "the error suggests the kind meant: {stderr}");
    assert!(stderr.contains("1 of 2 pipelines invalid"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
