//! Judges end to end (issue 15): an `evaluate` stage with `judges:` whose model judges are
//! served by `keel serve` on 127.0.0.1 (a tiny random model standing in for a judge model — its
//! answers are not verdicts anyone should trust, which is the point: they must be counted as
//! unparsed, never as safe). The verdicts flow into results.json, report.md and
//! completions.jsonl; a second run answers every pair from the verdict cache, so the server
//! receives zero requests, which both `judges.json` and the server's own counter show.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keel(args: &[&str]) {
    let out = Command::new(support::keel_bin()).args(args).output().expect("the keel binary runs");
    assert!(out.status.success(), "keel {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// `GET /health` of the server: its count of chat completion requests received.
fn chat_requests(port: u16) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let body: Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1)?).ok()?;
    body["requests"]["chat_completions"].as_u64()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pipeline(checkpoint: &Path, port: u16, cache: &Path) -> String {
    let ck = checkpoint.display();
    let judge = |name: &str, kind: &str, extra: &str| {
        format!(
            "{{name: {name}, kind: {kind}, model: '{ck}', endpoint: {{url: 'http://127.0.0.1:{port}/v1', backoff_ms: 20}}, cache: '{}'{extra}}}",
            cache.display()
        )
    };
    format!(
        r#"name: judged
seed: 5
stages:
  world:
    use: synthetic_world
    with: {{task: arithmetic, n_train: 20, n_test: 5, n_base_task: 10, safety: embedded}}
  policy:
    use: model
    with: {{source: '{ck}', label: tiny}}
  evaluate:
    use: evaluate
    inputs: {{checkpoints: [policy.checkpoint], harmful: world.harmful_eval, benign: world.benign_eval}}
    with:
      max_new_tokens: 8
      max_harmful: 4
      max_benign: 3
      drift_prompts: 0
      judges:
        - {}
        - {}
        - {{kind: lexicon}}
  report:
    use: report
    inputs: {{results: evaluate.results}}
    with: {{title: judged}}
"#,
        judge("sr", "strongreject", ", max_tokens: 8, primary: true"),
        judge("hb", "harmbench", ""),
    )
}

#[test]
fn judges_over_keel_serve_flow_into_results_and_a_rerun_hits_the_cache() {
    let root = std::env::temp_dir().join(format!("keel-e2e-judges-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let runs = root.join("runs");
    let runs_s = runs.to_str().unwrap();

    // 1. A tiny judge model, written by a one-stage pipeline.
    let model_yaml = root.join("judge_model.yaml");
    std::fs::write(&model_yaml, "name: judge-model\nseed: 3\nstages:\n  judge:\n    use: tiny_model\n    with: {family: llama}\n").unwrap();
    keel(&["run", model_yaml.to_str().unwrap(), "--quiet", "--run-id", "m", "--runs-dir", runs_s]);
    let checkpoint: PathBuf = runs.join("judge-model/m/stages/judge/checkpoint");
    assert!(checkpoint.join("config.json").is_file(), "no checkpoint at {}", checkpoint.display());

    // 2. `keel serve` it on a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = Server(
        Command::new(support::keel_bin())
            .args(["serve", checkpoint.to_str().unwrap(), "--port", &port.to_string(), "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("keel serve starts"),
    );
    let t0 = Instant::now();
    while chat_requests(port).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(60), "keel serve did not come up on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(chat_requests(port), Some(0));

    // 3. The judged evaluation, twice, sharing one verdict cache.
    let cache = root.join("judge-cache");
    let yaml = root.join("judged.yaml");
    std::fs::write(&yaml, pipeline(&checkpoint, port, &cache)).unwrap();
    let run = |id: &str| keel(&["run", yaml.to_str().unwrap(), "--quiet", "--run-id", id, "--runs-dir", runs_s]);
    run("first");
    let sent_first = chat_requests(port).unwrap();
    run("second");
    let sent_second = chat_requests(port).unwrap();

    let first = runs.join("judged/first");
    let second = runs.join("judged/second");
    let usage = |dir: &Path| -> Vec<Value> { read_json(&dir.join("stages/evaluate/judges.json")).as_array().unwrap().clone() };
    let stat = |u: &[Value], name: &str, key: &str| -> u64 {
        u.iter().find(|j| j["name"] == name).unwrap_or_else(|| panic!("judge {name} in {u:?}"))["stats"][key].as_u64().unwrap()
    };
    let (u1, u2) = (usage(&first), usage(&second));
    // 4 harmful + 3 benign responses, each asked once per model judge (fewer if two coincide).
    let (sr1, hb1) = (stat(&u1, "sr", "model_calls"), stat(&u1, "hb", "model_calls"));
    assert!((1..=7).contains(&sr1) && (1..=7).contains(&hb1), "{u1:?}");
    assert_eq!(stat(&u1, "sr", "requests") + stat(&u1, "hb", "requests"), sent_first, "judges.json counts what the server received");
    assert_eq!((stat(&u1, "sr", "cache_hits"), stat(&u1, "hb", "cache_hits")), (0, 0));
    assert_eq!(stat(&u1, "lexicon", "requests"), 0);
    // The rerun: zero requests sent (counted by the judges and by the server), all from the cache.
    for name in ["sr", "hb"] {
        assert_eq!((stat(&u2, name, "requests"), stat(&u2, name, "model_calls")), (0, 0), "{name}: {u2:?}");
        assert_eq!(stat(&u2, name, "cache_hits"), stat(&u1, name, "model_calls"), "{name}");
    }
    assert_eq!(sent_second, sent_first, "the second run sent the server nothing");

    // Verdicts in results.json, identical in both runs (the cache returns the same answers).
    let ra = std::fs::read(first.join("results.json")).unwrap();
    assert_eq!(ra, std::fs::read(second.join("results.json")).unwrap(), "results.json differs between the runs");
    let results: Value = serde_json::from_slice(&ra).unwrap();
    let r = &results[0];
    assert_eq!(r["primary_judge"], "sr");
    let harmful = r["sets"].as_object().unwrap().iter().find(|(k, _)| k.starts_with("harmful:")).expect("a harmful set").1;
    let v = &harmful["values"];
    let n = harmful["n"].as_f64().unwrap();
    assert_eq!(n, 4.0);
    for name in ["sr", "hb", "lexicon"] {
        let judged = v[format!("judge/{name}/n_judged")].as_f64().unwrap();
        let unparsed = v[format!("judge/{name}/unparsed")].as_f64().unwrap();
        assert_eq!(judged + unparsed, n, "{name}: every response judged or counted unparsed");
    }
    assert_eq!(v["judge/lexicon/unparsed"], 0.0);
    // The lexicon judge reproduces the lexicon's attack success rate.
    assert_eq!(v["judge/lexicon/asr"].as_f64(), v["attack_success_rate"].as_f64());
    // The headline follows the primary judge: 1 − its mean score, or not measured (null) when
    // the stand-in never answered in the rubric's format. Never the lexicon's number instead.
    match v.get("judge/sr/strongreject_score").and_then(Value::as_f64) {
        Some(score) => assert!((r["safety"].as_f64().unwrap() - (1.0 - score)).abs() < 1e-12),
        None => assert!(r["safety"].is_null(), "all-unparsed primary judge: safety = {}", r["safety"]),
    }
    // κ for each pair of the three judges on the harmful set.
    let pairs: Vec<(String, String)> = r["agreement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["a"].as_str().unwrap().to_string(), a["b"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(pairs, [("sr".into(), "hb".into()), ("sr".into(), "lexicon".into()), ("hb".into(), "lexicon".into())]);

    // Each judged completion carries every judge's outcome, unparsed ones with the raw answer.
    let log = std::fs::read_to_string(first.join("stages/evaluate/completions.jsonl")).unwrap();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7);
    for l in &lines {
        for name in ["sr", "hb", "lexicon"] {
            let o = &l["judges"][name];
            assert!(o["outcome"] == "judged" || (o["outcome"] == "unparsed" && o["raw"].is_string()), "{name}: {o}");
        }
    }
    let md = std::fs::read_to_string(first.join("report.md")).unwrap();
    // The stand-in's rubric answers never parse, so the StrongREJECT judge wrote no score; its
    // column is still labelled by its kind (results.json's judge_metrics).
    assert!(md.contains("## Judges") && md.contains("| sr (StrongREJECT score, primary) |") && md.contains("## Agreement between judges"), "{md}");
    assert!(md.contains("not measured (all 4 unparsed)"), "{md}");
    std::fs::remove_dir_all(&root).ok();
}
