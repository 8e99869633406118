//! Every validation error class: message, help and line/column.

use keel_pipeline::testkit;
use keel_pipeline::{
    list_markdown, list_text, load_str, Diagnostic, Diagnostics, ParamProblem, ParamSpec, ParamType, Params, PipelineDoc,
    PortSpec, Registry, ResourceSpec, Stage, StageContext, StageError, StageKind,
};

/// A learner-like kind with a required float, an enum, a semantic check and a policy resource.
struct LearnKind;

struct Noop;
impl Stage for Noop {
    fn run(self: Box<Self>, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }
}

impl StageKind for LearnKind {
    fn name(&self) -> &'static str {
        "learn"
    }
    fn doc(&self) -> &'static str {
        "test learner"
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("in", "int", "batches")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("beta", ParamType::Float, "KL coefficient"),
            ParamSpec::optional("steps", ParamType::Int, "100", "optimiser steps"),
            ParamSpec::optional("algo", ParamType::Enum(&["grpo", "ppo", "rloo"]), "grpo", "algorithm"),
        ]
    }
    fn resources(&self) -> Vec<ResourceSpec> {
        vec![ResourceSpec::writes("policy", "policy_store", "published weights").optional()]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        match params.get::<f64>("beta") {
            Ok(b) if b < 0.0 => vec![ParamProblem::new("beta", "must be >= 0").with_help("use 0 to disable the KL term")],
            _ => vec![],
        }
    }
    fn build(&self, _params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(Noop))
    }
}

/// A source of a different message type, to provoke port type mismatches.
struct TextKind;
impl StageKind for TextKind {
    fn name(&self) -> &'static str {
        "text"
    }
    fn doc(&self) -> &'static str {
        "emits strings"
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("out", "text", "strings")]
    }
    fn build(&self, _params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(Noop))
    }
}

fn registry() -> Registry {
    let (mut r, _) = testkit::registry();
    r.register(LearnKind).register(TextKind);
    r
}

fn errors(text: &str) -> Diagnostics {
    errors_with(text, &[])
}

fn errors_with(text: &str, overrides: &[&str]) -> Diagnostics {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match load_str("p.yaml", text, &o, &registry()) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

fn only(d: &Diagnostics) -> &Diagnostic {
    assert_eq!(d.len(), 1, "expected one error, got:\n{d}");
    &d.0[0]
}

fn at(d: &Diagnostic) -> (usize, usize) {
    (d.span.line, d.span.col)
}

const VALID: &str = "\
name: demo
seed: 7
stages:
  src:
    use: counter
    with: {count: 5}
  double:
    use: map
    with: {mul: 2}
    inputs: {in: src.out}
  sink:
    use: sink
    inputs: {in: double.out}
";

#[test]
fn valid_pipeline_resolves_defaults_and_inputs() {
    let p = load_str("p.yaml", VALID, &[], &registry()).unwrap();
    assert_eq!(p.name, "demo");
    assert_eq!(p.seed, 7);
    assert_eq!(p.stages.len(), 3);
    let double = p.stage("double").unwrap();
    assert_eq!(double.params.get::<i64>("mul").unwrap(), 2);
    assert_eq!(double.params.get::<i64>("add").unwrap(), 0, "default filled");
    assert_eq!(double.inputs["in"][0].to_string(), "src.out");
    let cfg = p.resolved_config();
    assert_eq!(cfg["stages"]["src"]["with"]["count"], 5);
    assert_eq!(cfg["stages"]["sink"]["inputs"]["in"][0], "double.out");
    assert_eq!(p.config_hash().len(), 64);
}

#[test]
fn yaml_syntax_error() {
    let d = errors("name: demo\nseed: 1\nstages: {a: {use: counter}\n");
    let e = only(&d);
    assert!(e.message.starts_with("YAML syntax error"), "{e}");
    assert_eq!(e.span.file.as_ref(), "p.yaml");
    assert_eq!(e.span.line, 4, "{e}");
    assert!(e.help.as_deref().unwrap_or("").contains("indentation"));
}

#[test]
fn unknown_kind_suggests_closest() {
    let d = errors("name: demo\nseed: 1\nstages:\n  a:\n    use: countr\n");
    let e = only(&d);
    assert_eq!(e.message, "unknown stage kind `countr` for stage `a`");
    assert_eq!(e.help.as_deref(), Some("did you mean `counter`?"));
    assert_eq!(at(e), (5, 10));
}

#[test]
fn unknown_param_renders_like_a_compiler() {
    let text = "name: demo\nseed: 1\nstages:\n  src: {use: counter}\n  learn:\n    use: learn\n    with:\n      betta: 0.1\n    inputs: {in: src.out}\n";
    let d = errors(text);
    // `betta` is unknown and `beta` is then missing: both reported in one pass.
    assert_eq!(d.len(), 2, "{d}");
    let unknown = d.iter().find(|e| e.message.contains("unknown parameter")).unwrap();
    assert_eq!(
        unknown.to_string(),
        "p.yaml:8:7: error: unknown parameter `betta` for stage `learn` (kind `learn`)\n  help: did you mean `beta`?"
    );
    let missing = d.iter().find(|e| e.message.contains("missing required parameter")).unwrap();
    assert_eq!(missing.message, "missing required parameter `beta` for stage `learn` (kind `learn`)");
    assert_eq!(at(missing), (7, 5), "reported at `with:`");
    assert!(missing.help.as_deref().unwrap().contains("beta: <float>"));
}

#[test]
fn missing_required_param_without_with_block() {
    let d = errors("name: demo\nseed: 1\nstages:\n  src: {use: counter}\n  learn:\n    use: learn\n    inputs: {in: src.out}\n");
    let e = only(&d);
    assert_eq!(e.message, "missing required parameter `beta` for stage `learn` (kind `learn`)");
    assert_eq!(at(e), (5, 3), "reported at the stage name");
}

#[test]
fn ill_typed_params() {
    let text = "name: demo\nseed: 1\nstages:\n  src: {use: counter, with: {count: many}}\n  learn:\n    use: learn\n    with: {beta: 0.1, algo: dpo}\n    inputs: {in: src.out}\n";
    let d = errors(text);
    assert_eq!(d.len(), 2, "{d}");
    assert_eq!(d.0[0].message, "parameter `count` of stage `src` (kind `counter`): expected int, found string");
    assert_eq!(at(&d.0[0]), (4, 37));
    assert_eq!(d.0[1].message, "parameter `algo` of stage `learn` (kind `learn`): `dpo` is not one of grpo, ppo, rloo");
    assert_eq!(at(&d.0[1]), (7, 29));
}

#[test]
fn semantic_check_reported_at_param() {
    let d = errors("name: demo\nseed: 1\nstages:\n  src: {use: counter}\n  learn:\n    use: learn\n    with: {beta: -1}\n    inputs: {in: src.out}\n");
    let e = only(&d);
    assert_eq!(e.message, "parameter `beta` of stage `learn` (kind `learn`): must be >= 0");
    assert_eq!(e.help.as_deref(), Some("use 0 to disable the KL term"));
    assert_eq!(at(e), (7, 18));
}

#[test]
fn missing_required_input() {
    let d = errors("name: demo\nseed: 1\nstages:\n  out:\n    use: sink\n");
    let e = only(&d);
    assert_eq!(e.message, "missing required input `in` for stage `out` (kind `sink`)");
    assert_eq!(at(e), (4, 3));
    // An empty list wires nothing.
    let d = errors("name: demo\nseed: 1\nstages:\n  out:\n    use: sink\n    inputs: {in: []}\n");
    assert_eq!(only(&d).message, "missing required input `in` for stage `out` (kind `sink`)");
}

#[test]
fn input_naming_unknown_stage_or_port() {
    let text = "name: demo\nseed: 1\nstages:\n  src: {use: counter}\n  a:\n    use: sink\n    inputs: {in: srcc.out}\n  b:\n    use: sink\n    inputs:\n      in: src.output\n  c:\n    use: sink\n    inputs: {inn: src.out, in: src.out}\n";
    let d = errors(text);
    assert_eq!(d.len(), 3, "{d}");
    assert_eq!(d.0[0].message, "input `in` of stage `a` refers to unknown stage `srcc`");
    assert_eq!(d.0[0].help.as_deref(), Some("did you mean `src`?"));
    assert_eq!(at(&d.0[0]), (7, 18));
    assert_eq!(d.0[1].message, "stage `src` (kind `counter`) has no output port `output`");
    assert_eq!(d.0[1].help.as_deref(), Some("did you mean `out`?"));
    assert_eq!(at(&d.0[1]), (11, 11));
    assert_eq!(d.0[2].message, "unknown input port `inn` for stage `c` (kind `sink`)");
    assert_eq!(at(&d.0[2]), (14, 14));
}

#[test]
fn malformed_input_reference() {
    let d = errors("name: demo\nseed: 1\nstages:\n  src: {use: counter}\n  a:\n    use: sink\n    inputs: {in: src}\n");
    let e = only(&d);
    assert_eq!(e.message, "input `in` of stage `a` must name `stage.port`, found `src`");
    assert_eq!(at(e), (7, 18));
}

#[test]
fn port_type_mismatch() {
    let d = errors("name: demo\nseed: 1\nstages:\n  words: {use: text}\n  nums: {use: counter}\n  a:\n    use: sink\n    inputs: {in: [nums.out, words.out]}\n");
    let e = only(&d);
    assert_eq!(e.message, "port type mismatch: input `a.in` takes `int` but `words.out` produces `text`");
    assert_eq!(at(e), (8, 29));
    assert_eq!(e.help.as_deref(), Some("connect an output of type `int`, e.g. `nums.out`"));
}

#[test]
fn duplicate_stage_names() {
    let d = errors("name: demo\nseed: 1\nstages:\n  a: {use: counter}\n  b: {use: sink, inputs: {in: a.out}}\n  a: {use: counter}\n");
    let e = only(&d);
    assert_eq!(e.message, "duplicate key `a`");
    assert_eq!(at(e), (6, 3));
    assert!(e.help.as_deref().unwrap().contains("line 4, column 3"));
}

#[test]
fn cycles_are_rejected_but_policy_feedback_is_not() {
    let text = "name: demo\nseed: 1\nstages:\n  a:\n    use: map\n    inputs: {in: b.out}\n  b:\n    use: map\n    inputs: {in: a.out}\n";
    let d = errors(text);
    let e = only(&d);
    assert!(e.message.starts_with("cycle in the stage graph: "), "{e}");
    assert!(e.message == "cycle in the stage graph: a -> b -> a" || e.message == "cycle in the stage graph: b -> a -> b");
    assert!(e.help.as_deref().unwrap().contains("policy_store"));
    assert!(at(e) == (6, 18) || at(e) == (9, 18), "{e}");

    let feedback = "name: rl\nseed: 1\nresources:\n  policy: {kind: policy_store, max_staleness: 1}\nstages:\n  sample:\n    use: gated_counter\n    resources: {policy: policy}\n  learn:\n    use: publisher\n    inputs: {in: sample.out}\n    resources: {policy: policy}\n";
    let p = load_str("rl.yaml", feedback, &[], &registry()).unwrap();
    assert_eq!(p.resources[0].max_staleness, 1);
}

#[test]
fn self_loop_is_a_cycle() {
    let d = errors("name: demo\nseed: 1\nstages:\n  a:\n    use: map\n    inputs: {in: a.out}\n");
    assert_eq!(only(&d).message, "cycle in the stage graph: a -> a");
    assert_eq!(at(only(&d)), (6, 18));
}

#[test]
fn unknown_resource_and_role() {
    let text = "name: rl\nseed: 1\nresources:\n  policy: {kind: policy_store}\nstages:\n  sample:\n    use: gated_counter\n    resources: {policy: polcy}\n  other:\n    use: gated_counter\n    resources: {polic: policy}\n";
    let d = errors(text);
    assert_eq!(d.len(), 2, "{d}");
    assert_eq!(d.0[0].message, "unknown resource `polcy` for role `policy` of stage `sample`");
    assert_eq!(d.0[0].help.as_deref(), Some("did you mean `policy`?"));
    assert_eq!(at(&d.0[0]), (8, 25));
    assert_eq!(d.0[1].message, "unknown resource role `polic` for stage `other` (kind `gated_counter`)");
    assert_eq!(at(&d.0[1]), (11, 17));
}

#[test]
fn missing_resource_and_bad_resource_kind() {
    let text = "name: rl\nseed: 1\nresources:\n  policy: {kind: policy_stor}\nstages:\n  sample:\n    use: gated_counter\n";
    let d = errors(text);
    assert_eq!(d.len(), 2, "{d}");
    assert_eq!(d.0[0].message, "unknown resource kind `policy_stor`");
    assert_eq!(d.0[0].help.as_deref(), Some("did you mean `policy_store`?"));
    assert_eq!(at(&d.0[0]), (4, 18));
    assert_eq!(d.0[1].message, "missing required resource `policy` for stage `sample` (kind `gated_counter`)");
    assert_eq!(at(&d.0[1]), (6, 3));
}

#[test]
fn top_level_problems() {
    let d = errors("nam: demo\nstages:\n  a: {use: counter, whith: {}}\n");
    let msgs: Vec<&str> = d.iter().map(|e| e.message.as_str()).collect();
    assert!(msgs.contains(&"unknown key `nam` in the pipeline file"), "{d}");
    assert!(msgs.contains(&"missing `name`"), "{d}");
    assert!(msgs.contains(&"missing `seed`"), "{d}");
    assert!(msgs.contains(&"unknown key `whith` in stage `a`"), "{d}");
    let whith = d.iter().find(|e| e.message.contains("whith")).unwrap();
    assert_eq!(whith.help.as_deref(), Some("did you mean `with`?"));
    assert_eq!(at(whith), (3, 21));
    let seed = errors("name: demo\nseed: -3\nstages: {a: {use: counter}}\n");
    assert_eq!(only(&seed).message, "`seed` must be a non-negative integer, found int");
    assert_eq!(at(only(&seed)), (2, 7));
}

#[test]
fn many_errors_at_once() {
    let text = "name: demo\nseed: 1\nstages:\n  a:\n    use: countr\n  b:\n    use: map\n    with: {mull: 2}\n    inputs: {in: zz.out}\n  c:\n    use: sink\n";
    let d = errors(text);
    assert_eq!(d.len(), 4, "{d}");
    let lines: Vec<usize> = d.iter().map(|e| e.span.line).collect();
    assert_eq!(lines, vec![5, 8, 9, 10], "sorted by position");
    assert!(d.to_string().ends_with("4 errors"));
}

#[test]
fn overrides_apply_before_validation() {
    let p = load_str("p.yaml", VALID, &["stages.double.with.mul=5".into(), "seed=99".into()], &registry()).unwrap();
    assert_eq!(p.stage("double").unwrap().params.get::<i64>("mul").unwrap(), 5);
    assert_eq!(p.seed, 99);
    assert_eq!(p.doc.overrides(), ["stages.double.with.mul=5", "seed=99"]);
    // A new parameter can be added through an override, creating `with:`.
    let p = load_str("p.yaml", VALID, &["stages.sink.with.delay_ms=3".into()], &registry()).unwrap();
    assert_eq!(p.stage("sink").unwrap().params.get::<i64>("delay_ms").unwrap(), 3);
    // Lists and maps parse as YAML.
    let mut doc = PipelineDoc::parse("p.yaml", VALID).unwrap();
    keel_pipeline::apply_override(&mut doc, "stages.double.inputs.in=[src.out, src.out]").unwrap();
    assert_eq!(doc.root().get("stages").unwrap().get("double").unwrap().get("inputs").unwrap().get("in").unwrap().shape(), "list");
}

#[test]
fn bad_override_paths() {
    let d = errors_with(VALID, &["stages.dubble.with.mul=3"]);
    let e = only(&d);
    assert_eq!(e.message, "unknown stage `dubble` in path `stages.dubble.with.mul`");
    assert_eq!(e.help.as_deref(), Some("did you mean `double`?"));
    assert_eq!(e.span.file.as_ref(), "--set 'stages.dubble.with.mul=3'");
    assert_eq!(at(e), (1, 8));

    let d = errors_with(VALID, &["stages.double.wiht.mul=3", "stagez.x=1", "nokey", "stages.src.use.x=1"]);
    assert_eq!(d.len(), 4, "{d}");
    let find = |needle: &str| d.iter().find(|e| e.message.contains(needle)).unwrap_or_else(|| panic!("{needle} in {d}"));
    let e = find("unknown stage field `wiht`");
    assert_eq!(at(e), (1, 15));
    assert_eq!(e.help.as_deref(), Some("did you mean `with`?"));
    assert_eq!(at(find("unknown top-level key `stagez`")), (1, 1));
    assert_eq!(find("override has no `=`").span.file.as_ref(), "--set 'nokey'");
    assert_eq!(at(find("`use` is a single value")), (1, 16));

    // An ill-typed override value is reported at the value inside the --set argument.
    let d = errors_with(VALID, &["stages.double.with.mul=lots"]);
    let e = only(&d);
    assert_eq!(e.message, "parameter `mul` of stage `double` (kind `map`): expected int, found string");
    assert_eq!(e.span.file.as_ref(), "--set 'stages.double.with.mul=lots'");
    assert_eq!(at(e), (1, 24));
    // An unknown parameter introduced by an override.
    let d = errors_with(VALID, &["stages.double.with.mull=3"]);
    assert_eq!(only(&d).message, "unknown parameter `mull` for stage `double` (kind `map`)");
}

#[test]
fn sweep_block_validation() {
    let text = format!("{VALID}sweep:\n  grid:\n    stages.double.with.mul: [1, 2]\n    stages.src.with.count: 3\n  seeds: [1, x]\n");
    let d = errors(&text);
    assert_eq!(d.len(), 2, "{d}");
    assert_eq!(d.0[0].message, "sweep values for `stages.src.with.count` must be a list");
    assert_eq!(at(&d.0[0]), (17, 28));
    assert_eq!(d.0[1].message, "a sweep seed must be a non-negative integer, found string");
    assert_eq!(at(&d.0[1]), (18, 14));
    // Every cell is validated: a bad grid parameter is reported once, at the grid key, naming the cell.
    let text = format!("{VALID}sweep:\n  grid:\n    stages.double.with.mull: [1, 2]\n  seeds: [1, 2]\n");
    let d = errors(&text);
    let e = only(&d);
    assert_eq!(e.message, "in sweep cell `double.mull=1_seed=1`: unknown parameter `mull` for stage `double` (kind `map`)");
    assert_eq!(at(e), (16, 24), "at the parameter inside the grid key");
    // A bad value in the grid is reported at the value.
    let text = format!("{VALID}sweep:\n  grid:\n    stages.double.with.mul: [1, two]\n");
    let d = errors(&text);
    let e = only(&d);
    assert_eq!(e.message, "in sweep cell `double.mul=two_seed=7`: parameter `mul` of stage `double` (kind `map`): expected int, found string");
    assert_eq!(at(e), (16, 33));
    // The grid path and cells are checked; unknown stages in grid paths point into the key.
    let text = format!("{VALID}sweep:\n  grid:\n    \"stages.dble.with.mul\": [1, 2]\n");
    let d = errors(&text);
    let e = only(&d);
    assert_eq!(e.message, "unknown stage `dble` in path `stages.dble.with.mul`");
    assert_eq!(at(e), (16, 13), "at `dble` inside the quoted key");
}

#[test]
fn listing_documents_every_kind() {
    let r = registry();
    let text = list_text(&r);
    assert!(text.contains("counter\n"));
    assert!(text.contains("    count (int, <= 1000000000, default 10): how many integers to emit\n      limit <= 1000000000: one message per integer"));
    assert!(text.contains("    beta (float, required): KL coefficient"));
    assert!(text.contains("    policy (policy_store, writes, optional): published weights"));
    assert!(text.contains("    in (int, optional): messages to forward before failing"));
    let md = list_markdown(&r);
    assert!(md.contains("## `map`"));
    assert!(md.contains("| `mul` | int | `1` | multiplier |"));
    assert!(md.contains("| `algo` | one of grpo\\|ppo\\|rloo | `grpo` | algorithm |"));
    assert!(md.contains("| `policy` | `policy_store` | reads | yes |"));
}
