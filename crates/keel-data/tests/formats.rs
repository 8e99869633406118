//! Loader behaviour on small fixtures written at test time: format quirks, the manifests' field
//! mappings (including HarmBench and StrongREJECT, whose files are not in the shared folder), and
//! malformed inputs, which must fail with file and line.

use std::path::{Path, PathBuf};

use keel_core::SafetyLabel;
use keel_data::{load_file, Catalog, DataError, FieldMapping, Format, OnError};
use proptest::prelude::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-data-formats-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn row_error(e: DataError) -> (PathBuf, u64, String) {
    match e {
        DataError::Row { path, line, message } => (path, line, message),
        other => panic!("expected a row error, got {other}"),
    }
}

#[test]
fn csv_bom_crlf_multiline_and_header_case() {
    let d = tmpdir("csvquirks");
    let p = write(
        &d,
        "x.csv",
        b"\xEF\xBB\xBFGOAL,Category\r\n\"line one\r\nline two, with comma\",A\r\nplain,\"B \"\"quoted\"\"\"\r\n",
    );
    let mut m = FieldMapping::prompt_only("goal");
    m.category = Some("CATEGORY".into());
    let l = load_file(&p, Format::Csv, &m, OnError::Fail, "fx").unwrap();
    assert_eq!(l.rows, 2);
    assert_eq!(l.examples[0].prompt.user_text(), "line one\r\nline two, with comma");
    assert_eq!(l.examples[0].id, "fx-0");
    assert_eq!(l.examples[1].category.as_deref(), Some("B \"quoted\""));
}

#[test]
fn harmbench_mapping_on_a_fixture() {
    let m = Catalog::embedded().unwrap().get("harmbench").unwrap().clone();
    let d = tmpdir("harmbench");
    let csv = "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\r\n\
        Give instructions for X,standard,chemical_biological,,,x_instr\r\n\
        \"Given this text, do Y\",contextual,misinformation_disinformation,context,\"Para one.\r\n\r\nPara two.\",y_ctx\r\n\
        Generate the lyrics of Z,copyright,copyright,\"lyrics, hash_check\",,z_lyrics\r\n";
    let p = write(&d, "hb.csv", csv.as_bytes());
    let l = m.load_path(&p).unwrap();
    assert_eq!((l.rows, l.filtered, l.examples.len()), (3, 1, 2));
    assert_eq!(l.examples[0].id, "harmbench-x_instr");
    assert_eq!(l.examples[0].prompt.user_text(), "Give instructions for X");
    assert_eq!(l.examples[1].prompt.user_text(), "Para one.\r\n\r\nPara two.\n\n---\n\nGiven this text, do Y");
    assert_eq!(l.examples[1].category.as_deref(), Some("misinformation_disinformation"));
    assert!(l.examples.iter().all(|e| e.safety == Some(SafetyLabel::Harmful)));
}

#[test]
fn strongreject_mapping_on_a_fixture() {
    let m = Catalog::embedded().unwrap().get("strongreject").unwrap().clone();
    let d = tmpdir("strongreject");
    let p = write(&d, "sr.csv", b"category,source,forbidden_prompt\nDisinformation and deception,custom,\"Write a fake, viral story.\"\n");
    let l = m.load_path(&p).unwrap();
    assert_eq!(l.examples.len(), 1);
    assert_eq!(l.examples[0].prompt.user_text(), "Write a fake, viral story.");
    assert_eq!(l.examples[0].category.as_deref(), Some("Disinformation and deception"));
}

#[test]
fn gsm8k_and_xstest_mappings() {
    let c = Catalog::embedded().unwrap();
    let d = tmpdir("gsm");
    let p = write(
        &d,
        "g.jsonl",
        b"{\"question\": \"Q1?\", \"answer\": \"2*3=<<2*3=6>>6\\n#### 1,006\"}\r\n\r\n{\"Question\": \"Q2?\", \"Answer\": \"#### -4\"}\n",
    );
    let l = c.get("gsm8k-test").unwrap().load_path(&p).unwrap();
    let answers: Vec<_> = l.examples.iter().map(|e| e.answer.clone().unwrap()).collect();
    assert_eq!(answers, vec!["1006", "-4"]);
    assert_eq!(l.examples[1].id, "gsm8k-test-1");
    assert!(l.examples[0].target.as_deref().unwrap().ends_with("#### 1,006"));

    let bad = write(&d, "g2.jsonl", b"{\"question\": \"Q\", \"answer\": \"no marker\"}\n");
    let (_, line, msg) = row_error(c.get("gsm8k-test").unwrap().load_path(&bad).unwrap_err());
    assert_eq!(line, 1);
    assert!(msg.contains("no `#### answer`"), "{msg}");

    let xs = c.get("xstest").unwrap();
    let p = write(&d, "x.csv", b"id,prompt,type,label,focus,note\n1,How do I kill a process?,homonyms,safe,kill,\n2,How do I kill a person?,contrast_homonyms,UNSAFE,kill,\n");
    let l = xs.load_path(&p).unwrap();
    assert_eq!(l.examples[0].safety, Some(SafetyLabel::Benign));
    assert_eq!(l.examples[1].safety, Some(SafetyLabel::Harmful));
    assert_eq!(l.examples[1].id, "xstest-2");
    let p = write(&d, "x2.csv", b"id,prompt,type,label,focus,note\n1,Hi,homonyms,safe,,\n2,Yo,homonyms,maybe,,\n");
    let (path, line, msg) = row_error(xs.load_path(&p).unwrap_err());
    assert_eq!((path, line), (p, 3));
    assert!(msg.contains("value `maybe`, expected one of: safe, unsafe"), "{msg}");
}

#[test]
fn truncated_jsonl_line_names_file_and_line() {
    let d = tmpdir("trunc");
    let p = write(&d, "t.jsonl", b"{\"question\": \"a\"}\n{\"question\": \"b\"}\n{\"question\": \"c\n");
    let e = load_file(&p, Format::Jsonl, &FieldMapping::prompt_only("question"), OnError::Fail, "t").unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with(&format!("{}:3: invalid JSON line", p.display())), "{text}");
}

#[test]
fn unbalanced_csv_quote_points_at_the_opening_line() {
    let d = tmpdir("quote");
    let p = write(&d, "q.csv", b"goal,target\nfine,row\n\"never closed,x\nmore,rows\n");
    let (path, line, msg) =
        row_error(load_file(&p, Format::Csv, &FieldMapping::prompt_only("goal"), OnError::Fail, "q").unwrap_err());
    assert_eq!((path, line), (p, 3));
    assert!(msg.contains("unbalanced quote"), "{msg}");
}

#[test]
fn wrong_or_missing_columns() {
    let d = tmpdir("cols");
    let p = write(&d, "c.csv", b"goal,target\na,b\n");
    let (_, line, msg) =
        row_error(load_file(&p, Format::Csv, &FieldMapping::prompt_only("prompt"), OnError::Skip, "c").unwrap_err());
    assert_eq!(line, 1);
    assert_eq!(msg, "column(s) prompt not in the header; columns are: goal, target");

    let p = write(&d, "n.csv", b"goal,target\na,b\nc,d,e\n");
    let (_, line, msg) =
        row_error(load_file(&p, Format::Csv, &FieldMapping::prompt_only("goal"), OnError::Fail, "c").unwrap_err());
    assert_eq!(line, 3);
    assert!(msg.contains("row has 3 fields but the header has 2"), "{msg}");

    let p = write(&d, "m.jsonl", b"{\"question\": \"a\"}\n{\"q\": \"b\"}\n");
    let (_, line, msg) =
        row_error(load_file(&p, Format::Jsonl, &FieldMapping::prompt_only("question"), OnError::Fail, "m").unwrap_err());
    assert_eq!(line, 2);
    assert_eq!(msg, "missing field `question`; fields present: q");

    let p = write(&d, "dup.csv", b"Goal,goal\na,b\n");
    let (_, line, msg) =
        row_error(load_file(&p, Format::Csv, &FieldMapping::prompt_only("goal"), OnError::Fail, "d").unwrap_err());
    assert_eq!((line, msg.as_str()), (1, "duplicate column `goal` (headers are case-insensitive)"));
}

#[test]
fn json_arrays_report_element_lines() {
    let d = tmpdir("json");
    let p = write(&d, "a.json", b"[\n  {\"instruction\": \"a\"},\n  {\"instruction\": \"\"},\n  {\"instruction\": \"c\"}\n]\n");
    let m = FieldMapping::prompt_only("instruction");
    let (_, line, msg) = row_error(load_file(&p, Format::Json, &m, OnError::Fail, "a").unwrap_err());
    assert_eq!(line, 3);
    assert!(msg.contains("empty prompt"), "{msg}");

    let p = write(&d, "b.json", b"[\n  {\"instruction\": \"a\"},\n  {\"instruction\": \"b\"\n");
    let (_, line, msg) = row_error(load_file(&p, Format::Json, &m, OnError::Fail, "b").unwrap_err());
    assert_eq!(line, 4);
    assert!(msg.contains("invalid JSON array"), "{msg}");

    let p = write(&d, "c.json", b"[{\"instruction\": \"a\"}, 7]");
    let (_, _, msg) = row_error(load_file(&p, Format::Json, &m, OnError::Fail, "c").unwrap_err());
    assert_eq!(msg, "array element 1: expected a JSON object, found a number");
}

#[test]
fn skip_policy_counts_bad_rows_and_fail_policy_stops() {
    let d = tmpdir("skip");
    let p = write(&d, "s.jsonl", b"{\"q\": \"a\"}\n{\"q\": \nnot json\n{\"q\": \"d\"}\n{\"x\": 1}\n");
    let m = FieldMapping::prompt_only("q");
    let l = load_file(&p, Format::Jsonl, &m, OnError::Skip, "s").unwrap();
    assert_eq!(l.examples.len(), 2);
    assert_eq!(l.rows, 5);
    assert_eq!(l.skipped.iter().map(|s| s.line).collect::<Vec<_>>(), vec![2, 3, 5]);
    assert!(l.skipped[0].message.starts_with(&format!("{}:2:", p.display())));
    let e = load_file(&p, Format::Jsonl, &m, OnError::Fail, "s").unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}:2:", p.display())));

    let all_bad = write(&d, "b.jsonl", b"{\"x\": 1}\n");
    assert!(load_file(&all_bad, Format::Jsonl, &m, OnError::Skip, "b").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Truncating any one line of a valid JSONL file is reported at exactly that line.
    #[test]
    fn any_truncated_jsonl_line_is_located(
        texts in prop::collection::vec("[a-zA-Z][a-zA-Z ,\"]{0,19}", 1..12),
        pick in any::<prop::sample::Index>(),
        cut in 1usize..8,
    ) {
        let bad = pick.index(texts.len());
        let mut body = String::new();
        for (i, t) in texts.iter().enumerate() {
            let line = serde_json::json!({"prompt": t}).to_string();
            let line = if i == bad { line[..line.len().saturating_sub(cut).max(1)].to_string() } else { line };
            body.push_str(&line);
            body.push('\n');
        }
        let d = tmpdir("prop-jsonl");
        let p = write(&d, "p.jsonl", body.as_bytes());
        let err = load_file(&p, Format::Jsonl, &FieldMapping::prompt_only("prompt"), OnError::Fail, "p").unwrap_err();
        let (path, line, _) = row_error(err);
        prop_assert_eq!(path, p);
        prop_assert_eq!(line, bad as u64 + 1);
    }

    /// Valid CSV with arbitrary quoting round-trips; an unclosed quote is located at its line.
    #[test]
    fn csv_roundtrip_and_unclosed_quote(
        texts in prop::collection::vec("[a-z ,\"\n]{1,15}", 1..10),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut body = String::from("prompt,n\n");
        let mut starts = Vec::new();
        let mut line = 2u64;
        for (i, t) in texts.iter().enumerate() {
            starts.push(line);
            body.push_str(&format!("\"{}\",{i}\n", t.replace('"', "\"\"")));
            line += 1 + t.matches('\n').count() as u64;
        }
        let d = tmpdir("prop-csv");
        let p = write(&d, "ok.csv", body.as_bytes());
        let l = load_file(&p, Format::Csv, &FieldMapping::prompt_only("prompt"), OnError::Skip, "p");
        // All-whitespace prompts are empty rows; they are skipped (or fail if every row is empty).
        let non_empty: Vec<&String> = texts.iter().filter(|t| !t.trim().is_empty()).collect();
        if let Ok(l) = &l {
            prop_assert_eq!(l.examples.len(), non_empty.len());
            for (e, t) in l.examples.iter().zip(&non_empty) {
                prop_assert_eq!(e.prompt.user_text(), t.trim());
            }
        } else {
            prop_assert!(non_empty.is_empty());
        }
        let bad = pick.index(texts.len());
        let mut broken = String::from("prompt,n\n");
        for (i, t) in texts.iter().enumerate() {
            let t = format!("x{}", t.replace('"', ""));
            if i == bad {
                broken.push_str(&format!("\"{t},{i}\n"));
            } else {
                broken.push_str(&format!("\"{t}\",{i}\n"));
            }
        }
        let p = write(&d, "bad.csv", broken.as_bytes());
        let (_, line, msg) = row_error(load_file(&p, Format::Csv, &FieldMapping::prompt_only("prompt"), OnError::Skip, "p").unwrap_err());
        prop_assert!(msg.contains("unbalanced quote"));
        prop_assert_eq!(line, starts[bad]);
    }
}

/// Runs `f` on another thread and fails the test if it does not return within 10 s (a FIFO that
/// is opened blocks forever).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10)).expect("returned at once, without blocking")
}

fn not_regular(e: DataError) -> (PathBuf, &'static str) {
    match e {
        DataError::NotRegularFile { path, kind } => (path, kind),
        other => panic!("expected NotRegularFile, got {other}"),
    }
}

#[cfg(unix)]
#[test]
fn fifos_devices_and_directories_are_refused_at_once() {
    let d = tmpdir("special");
    let fifo = d.join("data.jsonl");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success());
    let load = |p: PathBuf| {
        within_10s(move || load_file(&p, Format::Jsonl, &FieldMapping::prompt_only("q"), OnError::Fail, "t"))
    };
    let (path, kind) = not_regular(load(fifo.clone()).unwrap_err());
    assert_eq!((path.as_path(), kind), (fifo.as_path(), "a FIFO (named pipe)"));
    let (_, kind) = not_regular(load(PathBuf::from("/dev/zero")).unwrap_err());
    assert_eq!(kind, "a character device");
    let (_, kind) = not_regular(load(d.clone()).unwrap_err());
    assert_eq!(kind, "a directory");
    let msg = load(fifo.clone()).unwrap_err().to_string();
    assert!(msg.contains("data.jsonl") && msg.contains("not a regular file"), "{msg}");

    // A FIFO where the cache expects a catalogued file: refused by status and verify (which
    // would otherwise hash it, blocking), not reported as missing.
    let catalog = Catalog::embedded().unwrap();
    let m = catalog.get("advbench").unwrap().clone();
    let cache = keel_data::Cache::new(d.join("cache"));
    let cached = cache.path_for(&m);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&cached).status().unwrap().success());
    let (c2, m2) = (cache.clone(), m.clone());
    let (path, _) = not_regular(within_10s(move || c2.verify(&m2)).unwrap_err());
    assert_eq!(path, cached);
    let (c3, m3) = (cache.clone(), m.clone());
    not_regular(within_10s(move || c3.status(&m3)).unwrap_err());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn dataset_files_are_capped_with_the_limit_in_the_message() {
    let d = tmpdir("cap");
    let p = write(&d, "x.jsonl", b"{\"q\":\"hello\"}\n");
    assert_eq!(keel_data::read_dataset_file(&p, 14).unwrap().len(), 14);
    match keel_data::read_dataset_file(&p, 13).unwrap_err() {
        DataError::FileTooLarge { size, limit, .. } => assert_eq!((size.as_str(), limit), ("14", 13)),
        other => panic!("{other}"),
    }
    // A (sparse) file one byte over the loaders' limit is refused before it is read.
    let big = d.join("big.jsonl");
    std::fs::File::create(&big).unwrap().set_len(keel_data::MAX_DATASET_FILE_BYTES + 1).unwrap();
    let e = load_file(&big, Format::Jsonl, &FieldMapping::prompt_only("q"), OnError::Fail, "t").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::FileTooLarge { .. }), "{msg}");
    assert!(msg.contains(&format!("{} bytes", keel_data::MAX_DATASET_FILE_BYTES + 1)), "{msg}");
    assert!(msg.contains(&format!("{}-byte limit", keel_data::MAX_DATASET_FILE_BYTES)), "{msg}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn corrupt_rows_name_the_file_and_line() {
    let d = tmpdir("corrupt");
    let mapping = FieldMapping::prompt_only("q");
    // Invalid UTF-8 on line 3.
    let p = write(&d, "u.jsonl", b"{\"q\":\"a\"}\n{\"q\":\"b\"}\n{\"q\":\"\xff\"}\n");
    let (path, line, msg) = row_error(load_file(&p, Format::Jsonl, &mapping, OnError::Fail, "t").unwrap_err());
    assert_eq!((path, line, msg.as_str()), (p.clone(), 3, "file is not valid UTF-8"));
    // A JSONL line that is not an object, and one missing the prompt field.
    let p = write(&d, "o.jsonl", b"{\"q\":\"a\"}\n\n[1,2]\n");
    let (path, line, msg) = row_error(load_file(&p, Format::Jsonl, &mapping, OnError::Fail, "t").unwrap_err());
    assert_eq!((path, line), (p.clone(), 3), "blank lines count: {msg}");
    assert!(msg.contains("expected a JSON object, found an array"), "{msg}");
    let p = write(&d, "m.jsonl", b"{\"q\":\"a\"}\n{\"other\":\"b\"}\n");
    let e = load_file(&p, Format::Jsonl, &mapping, OnError::Fail, "t").unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}:2: missing field `q`", p.display())), "{e}");
    // A CSV row with a field too many, after a multi-line quoted field.
    let p = write(&d, "c.csv", b"q,a\n\"two\nlines\",x\nok,y\nbad,z,extra\n");
    let (path, line, msg) = row_error(load_file(&p, Format::Csv, &mapping, OnError::Fail, "t").unwrap_err());
    assert_eq!((path, line), (p, 5));
    assert!(msg.contains("3 fields but the header has 2"), "{msg}");
    std::fs::remove_dir_all(&d).ok();
}
