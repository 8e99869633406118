//! Shared by the end-to-end tests: where the `keel` binary is, killing a run at a chosen point,
//! and comparing two run directories file by file.
//!
//! These tests live in the workspace-root package `keel-e2e`, so cargo's `CARGO_BIN_EXE_keel`
//! (set only for a package's own binaries) is not available. The binary is found next to this
//! test executable instead: cargo puts test executables in `<target>/<profile>/deps/` and binaries
//! in `<target>/<profile>/`, for whatever target directory (`CARGO_TARGET_DIR`, `--target-dir`,
//! a `--target` triple) the build used. `cargo test --workspace` builds it (keel-cli has an
//! integration test, so cargo builds its binary); `cargo test -p keel-e2e` alone does not.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `keel args` (output discarded) until `ready()` holds, polling every 20 ms, then SIGKILLs
/// it. Panics, naming `what` it waited for, if the run ends first or 300 s pass.
pub fn kill_when(args: &[&str], what: &str, ready: impl Fn() -> bool) {
    let mut child = Command::new(keel_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the keel binary starts");
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < Duration::from_secs(300), "waited 300 s for {what}");
        assert!(child.try_wait().expect("polling the child").is_none(), "the run finished before {what}, so it could not be killed then");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping the child");
}

/// The step of the learner state that `<state_dir>/LATEST` points to (`step-N`); 0 before the
/// first.
pub fn latest_state_step(state_dir: &Path) -> u64 {
    std::fs::read_to_string(state_dir.join("LATEST"))
        .ok()
        .and_then(|s| s.trim().trim_start_matches("step-").parse::<u64>().ok())
        .unwrap_or(0)
}

/// Every file under `dir`, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable directory").map(|e| e.expect("entry")) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Asserts that two run directories hold the same files with the same bytes, except: `logs/`
/// (lines carry seconds), `resumes.jsonl` (only a resumed run has one), the run id, creation time
/// and command line in `manifest.json`, and the times in `status.json`.
pub fn assert_same_run(a: &Path, b: &Path) {
    let keep = |p: &PathBuf| !p.starts_with("logs") && p.as_path() != Path::new("resumes.jsonl");
    let fa: Vec<PathBuf> = files_under(a).into_iter().filter(keep).collect();
    let fb: Vec<PathBuf> = files_under(b).into_iter().filter(keep).collect();
    assert_eq!(fa, fb, "the run directories hold different files");
    let json = |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).expect("readable")).expect("JSON") };
    let mut differ = Vec::new();
    for rel in &fa {
        let (pa, pb) = (a.join(rel), b.join(rel));
        match rel.to_str() {
            Some("manifest.json") => {
                let (mut ma, mut mb) = (json(&pa), json(&pb));
                for m in [&mut ma, &mut mb] {
                    for k in ["run_id", "created_at", "command_line"] {
                        m[k] = serde_json::Value::Null;
                    }
                }
                assert_eq!(ma, mb, "manifest.json differs beyond run id, time and command line");
            }
            Some("status.json") => {
                let (mut sa, mut sb) = (json(&pa), json(&pb));
                for s in [&mut sa, &mut sb] {
                    for k in ["started_at", "finished_at", "wall_time_s"] {
                        s[k] = serde_json::Value::Null;
                    }
                    if let Some(stages) = s["stages"].as_object_mut() {
                        stages.values_mut().for_each(|st| st["wall_time_s"] = serde_json::Value::Null);
                    }
                }
                assert_eq!(sa, sb, "status.json differs beyond its times");
            }
            _ => {
                if std::fs::read(&pa).expect("readable") != std::fs::read(&pb).expect("readable") {
                    differ.push(rel.display().to_string());
                }
            }
        }
    }
    assert!(differ.is_empty(), "{} and {} differ in: {}", a.display(), b.display(), differ.join(", "));
}

/// The `--set` overrides of the reduced quickstart (tests/fixtures/quickstart_smoke.sets, shared
/// with scripts/smoke.sh), one per non-comment line of the fixture.
pub fn reduced_quickstart_sets() -> Vec<String> {
    let path = repo_path("tests/fixtures/quickstart_smoke.sets");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}
