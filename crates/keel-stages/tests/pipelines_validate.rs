//! Every pipeline shipped in `pipelines/` validates against the registry, and every sweep expands
//! into its documented number of cells: a recipe that no longer matches the code fails here, not
//! on a user's machine.

use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("pipelines/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_shipped_pipeline_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    files.sort();
    assert!(files.len() >= 6, "expected the quickstart and the ablation sweeps, found {files:?}");
    let registry = keel_stages::registry();
    for f in &files {
        let p = match keel_pipeline::load(f, &[], &registry) {
            Ok(p) => p,
            Err(d) if needs_only_a_trained_probe(f, &d) => continue,
            Err(d) => panic!("{} does not validate:\n{d}", f.display()),
        };
        if p.sweep.is_some() {
            let cells = keel_pipeline::expand_sweep(&p, &registry).unwrap_or_else(|d| panic!("{}: sweep does not expand:\n{d}", f.display()));
            // Ablations compare >= 3 settings, other sweeps (e.g. reasoning safety) >= 2; all over 3 seeds.
            let min = if f.components().any(|c| c.as_os_str() == "ablations") { 9 } else { 6 };
            assert!(cells.len() >= min, "{}: {} cells; expected >= {min} (settings x 3 seeds)", f.display(), cells.len());
        }
    }
}

/// Whether a pipeline's only problems are probe directories that hold no trained probe yet, and
/// its header says how to train one. A probe is an artifact the user makes (`keel safety
/// train-probe`, not fetched by scripts/fetch-test-data.sh), so on a clean machine such a recipe
/// is rightly refused by validation, with that message; anything else is a failure.
fn needs_only_a_trained_probe(file: &Path, d: &keel_pipeline::Diagnostics) -> bool {
    let text = std::fs::read_to_string(file).expect("pipeline file is readable");
    let header_names_training = text.lines().take_while(|l| l.starts_with('#')).any(|l| l.contains("keel safety train-probe"));
    header_names_training && d.iter().count() > 0 && d.iter().all(|x| x.message.contains("holds no probe.json (train a probe first)"))
}

#[test]
fn readme_example_validates() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).expect("README.md");
    let start = readme.find("```yaml\n").expect("README has a YAML example") + "```yaml\n".len();
    let end = start + readme[start..].find("```").expect("the YAML block is closed");
    let registry = keel_stages::registry();
    keel_pipeline::load_str("README.md", &readme[start..end], &[], &registry)
        .unwrap_or_else(|d| panic!("the README's pipeline example does not validate:\n{d}"));
}
