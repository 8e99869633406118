//! Hostile and absurd input (issue 19): every case is a clear error with a location, or correct
//! behaviour, and none hangs, aborts or writes outside the runs directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_pipeline::{
    check_run_id, list_markdown, list_text, load, load_str, run, testkit, Diagnostics, RunError, RunOptions,
    DEFAULT_MAX_SWEEP_CELLS,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn errors(text: &str, overrides: &[&str]) -> Diagnostics {
    let (reg, _) = testkit::registry();
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match load_str("p.yaml", text, &o, &reg) {
        Ok(p) => panic!("expected errors, got a valid pipeline with {} stages for:\n{text}", p.stages.len()),
        Err(e) => e,
    }
}

const BASE: &str = "name: h\nseed: 1\nstages:\n  src: {use: counter, with: {count: 2}}\n  sink: {use: sink, inputs: {in: src.out}}\n";

/// A 700-byte file whose grid has 10^7 cells: refused at once, at the `sweep:` key, with the
/// count, the limit and how to raise it.
#[test]
fn huge_sweep_grid_is_refused_before_expansion() {
    let values = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]";
    let mut text = format!("{BASE}sweep:\n  grid:\n");
    for key in ["count", "start", "delay_ms"] {
        text.push_str(&format!("    stages.src.with.{key}: {values}\n"));
    }
    for key in ["add", "mul"] {
        text.push_str(&format!("    stages.m{key}.with.{key}: {values}\n"));
    }
    text.push_str("  seeds: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100]\n");
    let text = text.replace("  sink: {use: sink, inputs: {in: src.out}}\n", "  madd: {use: map, inputs: {in: src.out}}\n  mmul: {use: map, inputs: {in: madd.out}}\n  sink: {use: sink, inputs: {in: mmul.out}}\n");
    assert!(text.len() < 1000, "a small file: {} bytes", text.len());
    let t = Instant::now();
    let d = errors(&text, &[]);
    assert!(t.elapsed() < Duration::from_secs(2), "validation took {:?}", t.elapsed());
    assert_eq!(d.len(), 1, "{d}");
    let e = &d.0[0];
    assert_eq!((e.span.line, e.span.col), (8, 1), "at the `sweep:` key");
    assert!(e.message.starts_with("the sweep has 10000000 cells (10 `stages.src.with.count` × "), "{}", e.message);
    assert!(e.message.ends_with(&format!("100 seed(s)), more than the limit of {DEFAULT_MAX_SWEEP_CELLS}")), "{}", e.message);
    assert!(e.help.as_deref().unwrap_or("").contains("--set sweep.max_cells=<n>"), "{e}");

    // Products past 2^64 are caught by the overflow check, not wrapped.
    let mut huge = format!("{BASE}sweep:\n  grid:\n");
    for _ in 0..20 {
        huge.push_str(&format!("    stages.src.with.count: {values}\n"));
    }
    let d = errors(&huge.replace("stages.src.with.count: [", "\"stages.src.with.count\": ["), &[]);
    assert!(d.iter().any(|e| e.message.contains("duplicate key")), "a repeated grid key is a duplicate: {d}");

    // A grid under the limit expands; raising the limit makes a larger one valid.
    let (reg, _) = testkit::registry();
    let small = format!("{BASE}sweep:\n  grid:\n    stages.src.with.count: [1, 2, 3]\n  seeds: [1, 2]\n");
    let p = load_str("p.yaml", &small, &[], &reg).expect("6 cells are fine");
    assert_eq!(p.sweep.as_ref().and_then(|s| s.cell_count()), Some(6));
    let d = errors(&small, &["sweep.max_cells=5"]);
    assert!(d.0[0].message.starts_with("the sweep has 6 cells") && d.0[0].message.ends_with("limit of 5"), "{d}");
    assert!(load_str("p.yaml", &small, &["sweep.max_cells=6".into()], &reg).is_ok());
}

/// Declared parameter ranges are checked at validation, at the value, with the limit and why;
/// integers written as floats say so; `keel list` shows the limit.
#[test]
fn parameter_ranges_and_float_integers() {
    let d = errors(BASE, &["stages.src.with.count=9223372036854775807"]);
    let e = &d.0[0];
    assert_eq!(d.len(), 1, "{d}");
    assert_eq!(
        e.message,
        "parameter `count` of stage `src` (kind `counter`): 9.223372036854776e18 is above the maximum 1000000000 (one message per integer; more would run for hours)"
    );
    assert_eq!(&*e.span.file, "--set 'stages.src.with.count=9223372036854775807'");
    assert!(e.help.as_deref().unwrap_or("").contains("int, <= 1000000000"), "{e}");
    let d = errors(&BASE.replace("count: 2", "count: 1e15"), &[]);
    let e = &d.0[0];
    assert_eq!((e.span.line, e.span.col), (4, 37));
    assert!(e.message.contains("expected int, found float 1e15") && e.message.contains("(`1000000000000000`)"), "{}", e.message);
    // At the limit is fine.
    let (reg, _) = testkit::registry();
    assert!(load_str("p.yaml", BASE, &["stages.src.with.count=1000000000".into()], &reg).is_ok());
    assert!(list_text(&reg).contains("count (int, <= 1000000000, default 10)"));
    assert!(list_markdown(&reg).contains("| `count` | int, &lt;= 1000000000 | `10` | how many integers to emit (limit: one message per integer"));
}

/// Non-scalar keys, content after a NUL, a second document: errors with locations, never
/// "valid (0 stages)". A UTF-8 BOM is skipped.
#[test]
fn yaml_front_end_oddities() {
    let d = errors("name: h\nseed: 1\nstages:\n  ? [src]\n  : {use: counter}\n  sink: {use: sink}\n", &[]);
    assert!(d.iter().any(|e| e.message == "a mapping key must be a plain name, found a list" && (e.span.line, e.span.col) == (4, 5)), "{d}");
    let d = errors("name: h\nseed: 1\n\0stages:\n  src: {use: counter}\n", &[]);
    assert_eq!((d.0[0].message.as_str(), d.0[0].span.line, d.0[0].span.col), ("NUL byte in a YAML text", 3, 1));
    let d = errors(&format!("---\n{BASE}---\nname: other\n"), &[]);
    assert!(d.0[0].message.contains("second YAML document") && d.0[0].span.line == 7, "{d}");
    let (reg, _) = testkit::registry();
    let p = load_str("p.yaml", &format!("\u{feff}{BASE}"), &[], &reg).expect("a BOM is accepted");
    assert_eq!(p.name, "h");
    assert_eq!(p.stages.len(), 2);
}

/// A pipeline path that is a FIFO, a device or a directory is refused at once, before it is
/// opened; an oversized or non-UTF-8 file is refused with the reason.
#[test]
fn pipeline_file_must_be_a_small_regular_file() {
    let (reg, _) = testkit::registry();
    let dir = tmp("files");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let refused = |path: &Path| -> String {
        let t = Instant::now();
        let e = load(path, &[], &reg).expect_err("refused");
        assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
        e.0[0].message.clone()
    };
    assert_eq!(refused(&dir), "the pipeline file is a directory");
    #[cfg(unix)]
    {
        assert_eq!(refused(Path::new("/dev/zero")), "the pipeline file is a character device");
        let fifo = dir.join("fifo.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
        if made {
            assert_eq!(refused(&fifo), "the pipeline file is a FIFO (named pipe)");
        }
    }
    let big = dir.join("big.yaml");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(keel_pipeline::MAX_PIPELINE_BYTES + 1).expect("sparse file");
    assert!(refused(&big).contains("more than the limit of 16777216"));
    let latin1 = dir.join("latin1.yaml");
    std::fs::write(&latin1, b"name: h\nseed: 1\ndescription: caf\xe9\n").expect("write");
    let e = load(&latin1, &[], &reg).expect_err("not UTF-8");
    assert_eq!((e.0[0].message.as_str(), e.0[0].span.line, e.0[0].span.col), ("the pipeline file is not valid UTF-8", 3, 17));
    let ok = dir.join("ok.yaml");
    std::fs::write(&ok, BASE).expect("write");
    assert!(load(&ok, &[], &reg).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

/// Run ids are single safe path components; nothing is written outside `--runs-dir`.
#[test]
fn run_ids_cannot_leave_the_runs_directory() {
    for bad in ["../../../x", "/tmp/abs", "a/b", "..", ".", ".hidden", "", "a\\b", "x\0y", "spa ce"] {
        assert!(matches!(check_run_id(bad), Err(RunError::InvalidRunId { .. })), "{bad:?} accepted");
    }
    assert!(check_run_id(&"x".repeat(129)).is_err());
    for good in ["20250101-120000", "run-2", "lr=0.1_seed=3", "a.b"] {
        assert!(check_run_id(good).is_ok(), "{good} refused");
    }
    let (reg, _) = testkit::registry();
    let p = load_str("p.yaml", BASE, &[], &reg).expect("valid");
    let root = tmp("runid");
    let outside = root.with_file_name(format!("{}-escaped", root.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
    let id = format!("../../{}", outside.file_name().and_then(|n| n.to_str()).unwrap_or("x"));
    let opts = RunOptions { runs_root: root.clone(), run_id: Some(id.clone()), ..RunOptions::default() };
    let e = run(&p, &opts).expect_err("refused");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().starts_with(&format!("invalid run id `{id}`: it starts with `.`; a run id names one directory under --runs-dir")), "{e}");
    assert!(!root.exists() && !outside.exists(), "nothing was written");
    let e = run(&p, &RunOptions { run_id: Some("/abs".into()), resume: true, ..opts }).expect_err("refused");
    assert!(matches!(e, RunError::InvalidRunId { .. }), "{e}");
}

/// Several stage threads logging at once give the same `metrics.jsonl` bytes on every run (stage
/// order, then step), and a resumed run whose stages start over keeps nothing twice.
#[test]
fn metrics_are_deterministic_and_resume_keeps_nothing_twice() {
    let text = "name: rec\nseed: 1\nresources:\n  a: {kind: policy_store}\n  b: {kind: policy_store}\nstages:\n  \
                src_a: {use: counter, with: {count: 6, delay_ms: 1}}\n  pub_a: {use: publisher, inputs: {in: src_a.out}, resources: {policy: a}}\n  \
                src_b: {use: counter, with: {count: 6, delay_ms: 1}}\n  pub_b: {use: publisher, inputs: {in: src_b.out}, resources: {policy: b}}\n";
    let (reg, _) = testkit::registry();
    let p = load_str("p.yaml", text, &[], &reg).expect("valid");
    let root = tmp("records");
    let mut files = Vec::new();
    for id in ["one", "two"] {
        let opts = RunOptions { runs_root: root.clone(), run_id: Some(id.into()), ..RunOptions::default() };
        run(&p, &opts).expect("runs");
        files.push(std::fs::read(root.join("rec").join(id).join("metrics.jsonl")).expect("metrics.jsonl"));
    }
    assert_eq!(files[0], files[1], "two runs give the same bytes");
    let text = String::from_utf8(files[0].clone()).expect("utf-8");
    let order: Vec<(String, u64)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (v["stage"].as_str().unwrap_or("").to_string(), v["step"].as_u64().unwrap_or(u64::MAX))
        })
        .collect();
    let mut expected = vec![("src_a".to_string(), 0)];
    expected.extend((1..=6).map(|v| ("pub_a".to_string(), v)));
    expected.push(("src_b".to_string(), 0));
    expected.extend((1..=6).map(|v| ("pub_b".to_string(), v)));
    assert_eq!(order, expected);
    let opts = RunOptions { runs_root: root.clone(), run_id: Some("one".into()), resume: true, ..RunOptions::default() };
    run(&p, &opts).expect("resumes");
    assert_eq!(std::fs::read(root.join("rec/one/metrics.jsonl")).expect("metrics.jsonl"), files[0], "nothing twice after resume");
    std::fs::remove_dir_all(&root).ok();
}
