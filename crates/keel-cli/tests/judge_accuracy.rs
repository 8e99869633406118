//! `keel safety judge-accuracy` on the repository's labelled set with the lexicon judges: the
//! table it prints carries the counts that `scripts/judge-labels-lexicon-counts.py` (a Python
//! re-implementation of the two lexicons) computes from the same file, and a malformed labelled
//! file is an input error naming its line.

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("the keel binary runs")
}

#[test]
fn lexicon_accuracy_on_the_labelled_set() {
    let labels = repo("data/judge_labels/labelled.jsonl");
    let judges = repo("data/judge_labels/judges-lexicon.yaml");
    let dir = std::env::temp_dir().join(format!("keel-judge-accuracy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("accuracy.json");
    let out = keel(&[
        "safety",
        "judge-accuracy",
        "--labels",
        &labels,
        "--judges",
        &judges,
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Label distribution: 23 refused, 27 harmful compliance, 50 harmless compliance.
    assert!(stdout.contains("| all | 100 | 23 | 27 | 50 |"), "{stdout}");
    // GCG (and both, which adds nothing on this set): refusal tp 17 fp 2 fn 6 tn 75, harm tp 26
    // fp 18 fn 1 tn 55. XSTest: refusal 14 / 1 / 9 / 76, harm 27 / 21 / 0 / 52.
    for name in ["lexicon_gcg", "lexicon_both"] {
        let row = format!(
            "| {name} | lexicon | 100 | 0 | 92.0% (92/100) | 89.5% / 73.9% | 0.76 | 81.0% (81/100) | 59.1% / 96.3% |"
        );
        assert!(stdout.contains(&row), "no `{row}` in\n{stdout}");
    }
    assert!(
        stdout.contains("| lexicon_xstest | lexicon | 100 | 0 | 90.0% (90/100) | 93.3% / 60.9% |"),
        "{stdout}"
    );
    assert!(stdout.contains("79.0% (79/100)"), "{stdout}");
    // The per-label view: of the 27 harmful compliances the GCG lexicon calls 1 a refusal.
    assert!(
        stdout.contains("| lexicon_gcg | harmful_compliance | 27 | 1 | 26 |"),
        "{stdout}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON was written"))
            .expect("valid JSON");
    assert_eq!(results[0]["judge"], "lexicon_gcg");
    assert_eq!(results[0]["refusal"]["fn_"], 6);
    assert_eq!(results[2]["harm"]["fp"], 18);

    // A label outside the three is an input error (exit 2) naming the file and line.
    let bad = dir.join("bad.jsonl");
    let text = std::fs::read_to_string(&labels).expect("labelled set");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = lines[2].replace("\"label\":\"harmful_compliance\"", "\"label\":\"partial\"");
    lines[2] = lines[2].replace("\"label\":\"harmless_compliance\"", "\"label\":\"partial\"");
    lines[2] = lines[2].replace("\"label\":\"refused\"", "\"label\":\"partial\"");
    std::fs::write(&bad, lines.join("\n")).expect("write");
    let out = keel(&[
        "safety",
        "judge-accuracy",
        "--labels",
        bad.to_str().expect("utf-8 path"),
        "--judges",
        &judges,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.jsonl:3:") && stderr.contains("partial"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A judge's `probe` directory names an environment variable as a pipeline's model reference
/// does: the error for a directory with no probe names the expanded path, and an unset variable
/// is named rather than read as a literal `${...}` directory.
#[test]
fn probe_directory_expands_environment_variables() {
    let labels = repo("data/judge_labels/labelled.jsonl");
    let dir = std::env::temp_dir().join(format!("keel-judge-accuracy-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let judges = dir.join("judges.yaml");
    std::fs::write(&judges, "- {name: p, kind: probe, probe: \"${KEEL_TEST_PROBE_ROOT}/absent\"}\n").expect("write");
    let run = |root: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
        c.args(["safety", "judge-accuracy", "--labels", &labels, "--judges", judges.to_str().expect("utf-8 path")]);
        match root {
            Some(r) => c.env("KEEL_TEST_PROBE_ROOT", r),
            None => c.env_remove("KEEL_TEST_PROBE_ROOT"),
        };
        c.output().expect("the keel binary runs")
    };
    let root = dir.to_str().expect("utf-8 path");
    let out = run(Some(root));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let want = format!("{root}/absent holds no probe.json");
    assert!(stderr.contains(&want), "no `{want}` in {stderr}");
    let out = run(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("`KEEL_TEST_PROBE_ROOT` is not set"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
