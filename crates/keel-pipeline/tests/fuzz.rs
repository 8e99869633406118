//! Arbitrary input to the loader and validator produces diagnostics, never a panic.

use keel_pipeline::{load_str, testkit, PipelineDoc};
use proptest::prelude::*;

fn registry() -> keel_pipeline::Registry {
    testkit::registry().0
}

/// Structured YAML built from pipeline-like vocabulary, so that validation gets deep.
fn yaml_value(depth: u32) -> BoxedStrategy<String> {
    let words = prop::sample::select(vec![
        "name", "seed", "stages", "use", "with", "inputs", "resources", "sweep", "grid", "seeds", "counter", "map",
        "sink", "fail", "panic", "publisher", "gated_counter", "policy", "policy_store", "kind", "max_staleness",
        "count", "delay_ms", "mul", "add", "in", "out", "src.out", "a.out", "b.in", "stages.a.with.count", "~", "true",
        "-1", "0", "3", "1.5", "1e400", ".inf", "'x'", "\"y\"", "[]", "{}", "a", "b",
    ])
    .prop_map(str::to_string);
    if depth == 0 {
        return words.boxed();
    }
    let leaf = words.clone();
    prop_oneof![
        2 => leaf,
        1 => prop::collection::vec(yaml_value(depth - 1), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        2 => prop::collection::vec((words, yaml_value(depth - 1)), 0..5).prop_map(|kv| {
            let items: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", items.join(", "))
        }),
    ]
    .boxed()
}

/// A pipeline assembled from plausible stage entries, some wrong, with an optional sweep block.
fn pipeline_like() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec!["counter", "map", "sink", "fail", "panic", "publisher", "gated_counter", "cnt"]);
    let name = prop::sample::select(vec!["a", "b", "c", "d"]);
    let port = prop::sample::select(vec!["a.out", "b.out", "c.out", "d.out", "a.in", "zz.out", "[a.out, b.out]", "x"]);
    let with = prop::sample::select(vec!["{}", "{count: 2}", "{mul: x}", "{delay_ms: -1}", "{count: 1, bogus: 1}", "~", "[1]"]);
    let stage = (name, kind, with, prop::option::of(port), any::<bool>()).prop_map(|(n, k, w, p, res)| {
        let mut s = format!("  {n}:\n    use: {k}\n    with: {w}\n");
        if let Some(p) = p {
            s.push_str(&format!("    inputs: {{in: {p}}}\n"));
        }
        if res {
            s.push_str("    resources: {policy: policy}\n");
        }
        s
    });
    let sweep = prop::sample::select(vec![
        "",
        "sweep: {grid: {stages.a.with.count: [1, 2]}, seeds: [1, 2]}\n",
        "sweep: {grid: {stages.zz.with.count: [1]}}\n",
        "sweep: {grid: {\"stages.a.with.mul\": [x]}, seeds: []}\n",
        "sweep: {seeds: [3]}\n",
    ]);
    (prop::collection::vec(stage, 1..5), sweep, 0u64..3).prop_map(|(stages, sweep, st)| {
        format!(
            "name: fuzz\nseed: 1\nresources:\n  policy: {{kind: policy_store, max_staleness: {st}}}\nstages:\n{}{sweep}",
            stages.concat()
        )
    })
}

/// Loads `text`: a valid pipeline's sweep expands; an invalid one has located diagnostics, none
/// showing an invisible byte order mark.
fn check_load(text: &str, overrides: &[String], reg: &keel_pipeline::Registry) -> Result<(), TestCaseError> {
    match load_str("fuzz.yaml", text, overrides, reg) {
        Ok(p) => {
            if p.sweep.is_some() {
                let cells = keel_pipeline::expand_sweep(&p, reg);
                prop_assert!(cells.is_ok(), "validated pipelines expand: {:?}", cells.err());
            }
        }
        Err(e) => {
            prop_assert!(!e.is_empty());
            for d in e.iter() {
                prop_assert!(d.span.line >= 1 && d.span.col >= 1, "{d}");
                prop_assert!(!d.message.contains('\u{feff}'), "a BOM leaked into a message: {d}");
            }
        }
    }
    Ok(())
}

/// A valid pipeline with a sweep, the seed of the mutation fuzzer.
const SEED_PIPELINE: &str = "name: fuzz\nseed: 1\nresources:\n  policy: {kind: policy_store, max_staleness: 1}\nstages:\n  a:\n    use: counter\n    with: {count: 3, delay_ms: 0}\n  b:\n    use: map\n    inputs: {in: a.out}\n    with: {mul: 2}\n  c: {use: publisher, inputs: {in: b.out}, resources: {policy: policy}}\nsweep:\n  grid: {stages.b.with.mul: [1, 2, 3]}\n  seeds: [1, 2]\n";

/// Fragments that hostile files contain: NULs, BOMs, document markers, complex keys, anchors,
/// huge numbers and grids.
const HOSTILE: &[&str] = &[
    "\0", "\u{feff}", "\n---\n", "\n...\n", "? [x]\n: 1\n", "{[a]: 1}", "&a [*a]", "*a", "1e15", "9223372036854775807",
    "99999999999999999999", "-1", ".nan", "!!binary aGk=", "max_cells: 100000000", "[0,1,2,3,4,5,6,7,8,9]", "\t", "\r\n", "#",
    "'", "\"", ":", "- ", "  ", "\n",
];

/// One edit of a text: insert a hostile fragment, delete a range, or duplicate a range, at a
/// position chosen by `at` (wrapped to a character boundary).
fn mutate(text: &str, op: u8, at: usize, len: usize, frag: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let i = at % (chars.len() + 1);
    let j = (i + len % 40).min(chars.len());
    let (head, tail): (String, String) = (chars[..i].iter().collect(), chars[i..].iter().collect());
    match op % 3 {
        0 => format!("{head}{}{tail}", HOSTILE[frag % HOSTILE.len()]),
        1 => format!("{head}{}", chars[j..].iter().collect::<String>()),
        _ => format!("{head}{}{tail}", chars[i..j].iter().collect::<String>()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// Up to eight edits of a valid pipeline: loading gives a pipeline or located diagnostics,
    /// never a panic, and always within a second (no hang on grids, aliases or odd bytes).
    #[test]
    fn mutated_pipelines_never_panic_or_hang(edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<usize>()), 1..8)) {
        let mut text = SEED_PIPELINE.to_string();
        for (op, at, len, frag) in edits {
            text = mutate(&text, op, at, len, frag);
        }
        let reg = registry();
        let t = std::time::Instant::now();
        check_load(&text, &[], &reg)?;
        prop_assert!(t.elapsed() < std::time::Duration::from_secs(1), "took {:?} on:\n{text}", t.elapsed());
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        let _ = load_str("fuzz.yaml", &text, &[], &registry());
    }

    #[test]
    fn random_yamlish_text_never_panics(text in "[a-z:{}\\[\\], \\n.'\"&*!#|>-]{0,120}") {
        let _ = load_str("fuzz.yaml", &text, &[], &registry());
    }

    #[test]
    fn random_structured_yaml_never_panics(body in yaml_value(4), stages in yaml_value(3)) {
        let text = format!("name: fuzz\nseed: 1\nstages: {stages}\nextra: {body}\n");
        if let Err(e) = load_str("fuzz.yaml", &text, &[], &registry()) {
            for d in e.iter() {
                prop_assert!(d.span.line >= 1 && d.span.col >= 1);
                prop_assert!(!d.message.is_empty());
            }
        }
        let text2 = format!("name: fuzz\nseed: 1\nstages:\n  a: {{use: counter, with: {body}}}\n  b: {{use: sink, inputs: {stages}}}\n");
        let _ = load_str("fuzz.yaml", &text2, &[], &registry());
    }

    #[test]
    fn random_pipelines_never_panic(text in pipeline_like(), spec in "stages\\.[a-d]\\.(with|inputs|use)\\.[a-z]{1,5}=[a-z0-9.\\[\\]]{0,6}") {
        let reg = registry();
        check_load(&text, std::slice::from_ref(&spec), &reg)?;
    }

    #[test]
    fn random_overrides_never_panic(spec in "[a-z.=\\[\\]{}: 0-9]{0,40}") {
        if let Ok(mut doc) = PipelineDoc::parse("p.yaml", "name: p\nseed: 1\nstages:\n  a: {use: counter}\n") {
            let _ = doc.apply_override(&spec);
            let _ = keel_pipeline::validate(&doc, &registry());
        }
    }
}
