//! Model references: parsing, local resolution, and the Hugging Face cache layout (a fake cache
//! built in a temporary directory; nothing is downloaded).

use std::path::{Path, PathBuf};

use keel_model::{ModelSource, ResolvedModel, SourceError};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-io-src-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn touch(dir: &Path, files: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for f in files {
        std::fs::write(dir.join(f), b"{}").unwrap();
    }
}

#[test]
fn io_source_parse_forms() {
    assert_eq!(
        ModelSource::parse("hf://HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
        ModelSource::Hub {
            repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            revision: None
        }
    );
    assert_eq!(
        ModelSource::parse("hf://Qwen/Qwen2.5-0.5B-Instruct@v1.0").unwrap(),
        ModelSource::Hub {
            repo: "Qwen/Qwen2.5-0.5B-Instruct".into(),
            revision: Some("v1.0".into())
        }
    );
    assert_eq!(
        ModelSource::parse("tiny-1m").unwrap(),
        ModelSource::Preset("tiny-1m".into())
    );
    assert_eq!(
        ModelSource::parse(" tiny_8m ").unwrap(),
        ModelSource::Preset("tiny_8m".into())
    );
    assert_eq!(
        ModelSource::parse("models/SmolLM2.Q4_1.GGUF").unwrap(),
        ModelSource::Gguf(PathBuf::from("models/SmolLM2.Q4_1.GGUF"))
    );
    assert_eq!(
        ModelSource::parse("./ckpt/step-100").unwrap(),
        ModelSource::Dir(PathBuf::from("./ckpt/step-100"))
    );
    assert_eq!(
        ModelSource::parse("/abs/model").unwrap(),
        ModelSource::Dir(PathBuf::from("/abs/model"))
    );
    if let Some(home) = std::env::var_os("HOME") {
        assert_eq!(
            ModelSource::parse("~/m").unwrap(),
            ModelSource::Dir(PathBuf::from(home).join("m"))
        );
    }
    for bad in [
        "",
        "hf://",
        "hf://onlyname",
        "hf://a/b/c",
        "hf://org/name@",
        "s3://bucket/model",
        "what is this?",
    ] {
        let err = ModelSource::parse(bad).unwrap_err();
        assert!(matches!(err, SourceError::Invalid { .. }), "{bad:?}: {err}");
    }
    // Display round-trips the reference.
    for s in ["hf://a/b@main", "hf://a/b", "tiny-1m"] {
        assert_eq!(ModelSource::parse(s).unwrap().to_string(), s);
    }
}

#[test]
fn io_source_resolves_local_directories() {
    let root = scratch("dir");
    let full = root.join("full");
    touch(
        &full,
        &[
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors",
        ],
    );
    let r = ModelSource::parse(full.to_str().unwrap())
        .unwrap()
        .resolve()
        .unwrap();
    let ResolvedModel::Dir(files) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(files.weights, vec![full.join("model.safetensors")]);
    assert_eq!(
        files.tokenizer_config,
        Some(full.join("tokenizer_config.json"))
    );
    assert_eq!(files.generation_config, None);
    assert_eq!(r.config_path(), Some(full.join("config.json").as_path()));
    assert_eq!(r.files().len(), 4);

    // Sharded weights via the index.
    let sharded = root.join("sharded");
    touch(
        &sharded,
        &[
            "config.json",
            "tokenizer.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ],
    );
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let ResolvedModel::Dir(files) = ModelSource::Dir(sharded.clone()).resolve().unwrap() else {
        panic!()
    };
    assert_eq!(
        files.weights,
        vec![
            sharded.join("model-00001-of-00002.safetensors"),
            sharded.join("model-00002-of-00002.safetensors")
        ]
    );

    // Missing files are listed by name.
    let partial = root.join("partial");
    touch(&partial, &["config.json"]);
    let err = ModelSource::Dir(partial.clone())
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.json")
            && err.contains("model.safetensors")
            && err.contains("partial"),
        "{err}"
    );

    // A directory holding only a GGUF resolves to it; a missing path says it does not exist.
    let g = root.join("gguf-only");
    std::fs::create_dir_all(&g).unwrap();
    std::fs::write(g.join("m.Q4_1.gguf"), b"GGUF....").unwrap();
    assert_eq!(
        ModelSource::Dir(g.clone()).resolve().unwrap(),
        ResolvedModel::Gguf(g.join("m.Q4_1.gguf"))
    );
    let err = ModelSource::Gguf(root.join("absent.gguf"))
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absent.gguf") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(
        ModelSource::parse("tiny-1m").unwrap().resolve().unwrap(),
        ResolvedModel::Preset("tiny-1m".into())
    );
    // A typo is not silently a preset: the error lists the presets and the ./ form for directories.
    let err = ModelSource::parse("tiny-1n")
        .unwrap()
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tiny-1m") && err.contains("./tiny-1n"),
        "{err}"
    );
    let err = ResolvedModel::Preset("tiny-1m".into())
        .load(&candle_core::Device::Cpu, candle_core::DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("preset") && err.contains("train_bpe"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn io_source_resolves_the_hugging_face_cache() {
    let cache = scratch("hfcache");
    let repo_dir = cache.join("models--HuggingFaceTB--SmolLM2-135M-Instruct");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo_dir.join("snapshots").join(commit);
    touch(
        &snap,
        &[
            "config.json",
            "tokenizer.json",
            "model.safetensors",
            "generation_config.json",
        ],
    );
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();

    let src = ModelSource::parse("hf://HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
    let ResolvedModel::Dir(files) = src.resolve_with_cache(&cache).unwrap() else {
        panic!()
    };
    assert_eq!(files.dir, snap);
    assert_eq!(
        files.generation_config,
        Some(snap.join("generation_config.json"))
    );

    // A commit hash names the snapshot directly.
    let by_commit = ModelSource::parse(&format!(
        "hf://HuggingFaceTB/SmolLM2-135M-Instruct@{commit}"
    ))
    .unwrap();
    assert!(matches!(
        by_commit.resolve_with_cache(&cache).unwrap(),
        ResolvedModel::Dir(_)
    ));

    // Missing revision / missing model: the message says how to get it and where it must go.
    let err = ModelSource::parse("hf://HuggingFaceTB/SmolLM2-135M-Instruct@dev")
        .unwrap()
        .resolve_with_cache(&cache)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct --revision dev"),
        "{msg}"
    );
    assert!(
        msg.contains("models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/<commit>"),
        "{msg}"
    );
    assert!(msg.contains("refs/dev"), "{msg}");
    let err = ModelSource::parse("hf://org/absent")
        .unwrap()
        .resolve_with_cache(&cache)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("huggingface-cli download org/absent")
            && err.contains(cache.to_str().unwrap()),
        "{err}"
    );

    // A snapshot missing its weights names the missing file.
    std::fs::remove_file(snap.join("model.safetensors")).unwrap();
    let err = src.resolve_with_cache(&cache).unwrap_err().to_string();
    assert!(err.contains("model.safetensors not found"), "{err}");
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn io_source_expands_environment_variables() {
    // A variable name unique to this test, so parallel tests cannot disturb it.
    std::env::set_var("KEEL_TEST_SOURCE_ROOT", "/opt/keel-assets");
    assert_eq!(
        ModelSource::parse("${KEEL_TEST_SOURCE_ROOT}/smollm2/model.Q4_1.gguf").unwrap(),
        ModelSource::Gguf(PathBuf::from("/opt/keel-assets/smollm2/model.Q4_1.gguf"))
    );
    assert_eq!(
        ModelSource::parse("$KEEL_TEST_SOURCE_ROOT/tiny").unwrap(),
        ModelSource::Dir(PathBuf::from("/opt/keel-assets/tiny"))
    );
    let err = ModelSource::parse("${KEEL_TEST_SURELY_UNSET_VAR}/m.gguf").unwrap_err().to_string();
    assert!(err.contains("KEEL_TEST_SURELY_UNSET_VAR") && err.contains("not set"), "{err}");
    let err = ModelSource::parse("${KEEL_TEST_SOURCE_ROOT/m.gguf").unwrap_err().to_string();
    assert!(err.contains("unclosed"), "{err}");
}

/// Issue 19 row 7: shard paths of `model.safetensors.index.json` that leave the model directory
/// (`..`, absolute, a symlink resolving outside) are refused, both when resolving the reference
/// and when loading; a Hugging Face cache snapshot whose shards link to the repository's blobs
/// still resolves.
#[test]
fn io_source_refuses_shards_outside_the_model_directory() {
    use candle_core::{DType, Device, Tensor};
    use keel_model::weights::read_checkpoint_tensors;
    let root = scratch("shards");
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> =
        [("w".to_string(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap())].into();
    keel_model::weights::write_safetensors(&outside.join("evil.safetensors"), &tensors).unwrap();
    let model = root.join("model");
    touch(&model, &["config.json", "tokenizer.json"]);
    keel_model::weights::write_safetensors(&model.join("good.safetensors"), &tensors).unwrap();
    std::os::unix::fs::symlink(outside.join("evil.safetensors"), model.join("link.safetensors")).unwrap();
    let abs = outside.join("evil.safetensors").display().to_string();
    for shard in ["../outside/evil.safetensors", abs.as_str(), "link.safetensors", "sub/../../outside/evil.safetensors"] {
        let index = serde_json::json!({"weight_map": {"w": shard, "v": "good.safetensors"}});
        std::fs::write(model.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let err = ModelSource::Dir(model.clone()).resolve().unwrap_err().to_string();
        assert!(err.contains("model.safetensors.index.json") && err.contains("outside the model directory"), "{shard}: {err}");
        let err = read_checkpoint_tensors(&model, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("model.safetensors.index.json") && err.contains("outside the model directory"), "{shard}: {err}");
    }
    // Inside the directory: accepted, and loads.
    let index = serde_json::json!({"weight_map": {"w": "good.safetensors"}});
    std::fs::write(model.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ResolvedModel::Dir(files) = ModelSource::Dir(model.clone()).resolve().unwrap() else { panic!() };
    assert_eq!(files.weights, vec![model.join("good.safetensors")]);
    assert_eq!(read_checkpoint_tensors(&model, &Device::Cpu).unwrap().len(), 1);

    // A Hugging Face cache snapshot: shards are symlinks into ../../blobs, which is allowed.
    let cache = root.join("hub");
    let repo_dir = cache.join("models--org--name");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo_dir.join("snapshots").join(commit);
    touch(&snap, &["config.json", "tokenizer.json"]);
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    keel_model::weights::write_safetensors(&repo_dir.join("blobs").join("abc123"), &tensors).unwrap();
    std::os::unix::fs::symlink("../../blobs/abc123", snap.join("model-00001-of-00001.safetensors")).unwrap();
    let index = serde_json::json!({"weight_map": {"w": "model-00001-of-00001.safetensors"}});
    std::fs::write(snap.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();
    let src = ModelSource::parse("hf://org/name").unwrap();
    assert!(matches!(src.resolve_with_cache(&cache).unwrap(), ResolvedModel::Dir(_)));
    assert_eq!(read_checkpoint_tensors(&snap, &Device::Cpu).unwrap().len(), 1);
    std::fs::remove_dir_all(&root).ok();
}

/// Issue 19 row 7: an `hf://` revision that is a path is refused when parsed, and a refs file
/// pointing outside the repository's snapshots is refused when resolved; git-style names with
/// slashes (`refs/pr/1`) stay valid.
#[test]
fn io_source_refuses_hub_revisions_that_are_paths() {
    for bad in ["hf://org/name@/abs/dir", "hf://org/name@../x", "hf://org/name@a/../../x", "hf://org/name@.hidden", "hf://org/name@a//b"] {
        let err = ModelSource::parse(bad).unwrap_err().to_string();
        assert!(err.contains("is not a branch, tag or commit name"), "{bad}: {err}");
    }
    assert_eq!(
        ModelSource::parse("hf://org/name@refs/pr/1").unwrap(),
        ModelSource::Hub { repo: "org/name".into(), revision: Some("refs/pr/1".into()) }
    );
    // A refs file is data from the cache: one naming a directory outside the snapshots is refused.
    let cache = scratch("evilrefs");
    let elsewhere = cache.join("elsewhere");
    touch(&elsewhere, &["config.json", "tokenizer.json", "model.safetensors"]);
    let repo_dir = cache.join("models--org--name");
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("snapshots")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), "../../elsewhere").unwrap();
    let err = ModelSource::parse("hf://org/name").unwrap().resolve_with_cache(&cache).unwrap_err().to_string();
    assert!(err.contains("not a snapshot under"), "{err}");
    std::fs::remove_dir_all(&cache).ok();
}
