//! Real-asset tests on SmolLM2-135M-Instruct (GGUF Q4_1). They read the asset directory from
//! `KEEL_ASSETS` and FAIL, never skip, when it is unset or the file is missing, so a CI job that
//! runs them deliberately cannot pass vacuously. Fetch the assets with
//! `bash scripts/fetch-test-data.sh` and run `cargo test --release -p keel-model --test io_smollm2`.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use keel_core::{Message, Role};
use keel_model::{
    import_gguf, read_gguf, read_gguf_tokenizer, CausalLm, ChatTemplate, ModelConfig, ModelSource,
    ResolvedModel, Tokenizer,
};

fn smollm2_gguf() -> PathBuf {
    let dir = std::env::var_os("KEEL_ASSETS").unwrap_or_else(|| {
        panic!(
            "KEEL_ASSETS is not set: these tests need the SmolLM2 asset. Run \
             `bash scripts/fetch-test-data.sh` and run the tests with cargo (it sets KEEL_ASSETS)"
        )
    });
    let path = PathBuf::from(dir)
        .join("smollm2-135m-instruct")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `bash scripts/fetch-test-data.sh` to fetch it",
        path.display()
    );
    path
}

/// The raw vocabulary and merges straight from the GGUF metadata, read without Keel's code.
fn raw_vocab(path: &PathBuf) -> (Vec<String>, HashMap<(String, String), usize>) {
    let mut r = BufReader::new(File::open(path).unwrap());
    let c = gguf_file::Content::read(&mut r).unwrap();
    let strings = |key: &str| -> Vec<String> {
        c.metadata[key]
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| v.to_string().unwrap().clone())
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens");
    let merges = strings("tokenizer.ggml.merges")
        .into_iter()
        .enumerate()
        .map(|(rank, m)| {
            let (a, b) = m.split_once(' ').unwrap();
            ((a.to_string(), b.to_string()), rank)
        })
        .collect();
    (tokens, merges)
}

fn byte_chars() -> Vec<char> {
    let direct =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0;
    (0..256u32)
        .map(|b| {
            if direct(b) {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            }
        })
        .collect()
}

/// llama.cpp's `smollm` pre-tokenizer written out by hand: every digit alone, then GPT-2's
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` on the rest.
fn reference_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut segment = String::new();
    let flush = |seg: &mut String, pieces: &mut Vec<String>| {
        pieces.extend(gpt2_split(seg));
        seg.clear();
    };
    for ch in text.chars() {
        if ch.is_numeric() {
            flush(&mut segment, &mut pieces);
            pieces.push(ch.to_string());
        } else {
            segment.push(ch);
        }
    }
    flush(&mut segment, &mut pieces);
    pieces
}

fn gpt2_split(text: &str) -> Vec<String> {
    let c: Vec<char> = text.chars().collect();
    let (letter, number, space) = (
        |x: char| x.is_alphabetic(),
        |x: char| x.is_numeric(),
        |x: char| x.is_whitespace(),
    );
    let other = |x: char| !letter(x) && !number(x) && !space(x);
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let rest: String = c[i..].iter().take(3).collect();
        let contraction = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
            .iter()
            .find(|p| rest.starts_with(*p));
        let run = |start: usize, pred: &dyn Fn(char) -> bool| {
            let mut j = start;
            while j < c.len() && pred(c[j]) {
                j += 1;
            }
            j
        };
        let after_space = if c[i] == ' ' { i + 1 } else { i };
        let end = if let Some(p) = contraction {
            i + p.chars().count()
        } else if after_space < c.len() && letter(c[after_space]) {
            run(after_space, &letter)
        } else if after_space < c.len() && number(c[after_space]) {
            run(after_space, &number)
        } else if after_space < c.len() && other(c[after_space]) {
            run(after_space, &other)
        } else {
            let j = run(i, &space);
            if j == c.len() || j - i == 1 {
                j
            } else {
                j - 1
            }
        };
        out.push(c[i..end].iter().collect());
        i = end;
    }
    out
}

/// Plain rank-ordered BPE over the GGUF merges.
fn reference_encode(
    text: &str,
    tokens: &[String],
    merges: &HashMap<(String, String), usize>,
) -> Vec<u32> {
    let bytes = byte_chars();
    let index: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let mut ids = Vec::new();
    for piece in reference_pieces(text) {
        let mut sym: Vec<String> = piece
            .bytes()
            .map(|b| bytes[b as usize].to_string())
            .collect();
        loop {
            let best = (0..sym.len().saturating_sub(1))
                .filter_map(|k| {
                    merges
                        .get(&(sym[k].clone(), sym[k + 1].clone()))
                        .map(|r| (*r, k))
                })
                .min();
            let Some((_, k)) = best else { break };
            let merged = format!("{}{}", sym[k], sym[k + 1]);
            sym.splice(k..k + 2, [merged]);
        }
        for s in sym {
            ids.push(
                *index
                    .get(s.as_str())
                    .unwrap_or_else(|| panic!("symbol {s:?} not in vocabulary")),
            );
        }
    }
    ids
}

const SAMPLES: [&str; 10] = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "héllo wörld — naïve café, Zürich",
    "emoji 🚀🔥 and 👩‍💻 test",
    "fn main() {\n    println!(\"{}\", 42);\n}",
    "Numbers: 3.14159, 1234567 and 2025-01-01; x=-17.5e3",
    "  multiple   spaces\tand\ttabs\n\n\nnewlines  ",
    "I'm sure you'll see they've done it, haven't they?",
    "漢字とカタカナ, русский текст, العربية",
];

#[test]
fn io_smollm2_tokenizer_matches_gguf_vocabulary() {
    let path = smollm2_gguf();
    let tok = read_gguf_tokenizer(&path).unwrap();
    let (tokens, merges) = raw_vocab(&path);
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(tok.encode("<|im_start|>user\n", false).unwrap()[0], 1);
    assert_eq!(tok.encode("<|im_end|>", false).unwrap(), vec![2]);
    assert_eq!(tok.encode("<|endoftext|>", false).unwrap(), vec![0]);
    // Common words are single vocabulary entries, at their GGUF index.
    let idx = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    assert_eq!(tok.encode("Hello", false).unwrap(), vec![idx("Hello")]);
    assert_eq!(tok.encode(" the", false).unwrap(), vec![idx("Ġthe")]);
    assert_eq!(tok.encode(" Paris", false).unwrap(), vec![idx("ĠParis")]);
    // SmolLM2 splits numbers into single digits.
    assert_eq!(
        tok.encode("2025", false).unwrap(),
        vec![idx("2"), idx("0"), idx("2"), idx("5")]
    );

    let mut total = 0;
    for s in SAMPLES {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(ids, reference_encode(s, &tokens, &merges), "ids of {s:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), s, "round trip of {s:?}");
        total += ids.len();
    }
    eprintln!(
        "{} sample strings -> {total} tokens, all equal to the reference BPE",
        SAMPLES.len()
    );
    // Adding special tokens adds nothing for SmolLM2 (no BOS in its post-processor).
    assert_eq!(tok.encode("Hello", true).unwrap(), vec![idx("Hello")]);
}

#[test]
fn io_smollm2_import_and_generate_paris() {
    let path = smollm2_gguf();
    let t0 = Instant::now();
    let model = read_gguf(&path).unwrap();
    let read_s = t0.elapsed().as_secs_f64();
    let c = &model.config;
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["head_dim"], 64);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["max_position_embeddings"], 8192);
    assert_eq!(c["rope_theta"].as_f64(), Some(100000.0));
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(
        model.tensors.len(),
        2 + 30 * 9,
        "embed + norm + 9 per layer"
    );
    assert_eq!(model.source_dtypes.get("Q4_1"), Some(&210));
    assert_eq!(model.source_dtypes.get("Q8_0"), Some(&1));
    let n_params: usize = model.tensors.values().map(Tensor::elem_count).sum();
    assert_eq!(n_params, 134_515_008);

    drop(model);

    // Load through a model reference, as stages and the CLI do.
    let resolved = ModelSource::parse(path.to_str().unwrap())
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(resolved, ResolvedModel::Gguf(path.clone()));
    let (lm, tok): (CausalLm, Tokenizer) = resolved.load(&Device::Cpu, DType::F32).unwrap();
    assert_eq!(lm.num_parameters(), 134_515_008);
    let template = ChatTemplate::from_tokenizer(&tok).unwrap();
    let prompt = template
        .render(
            &[Message::new(Role::User, "What is the capital of France?")],
            true,
        )
        .unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"));

    let mut ids = tok.encode(&prompt, false).unwrap();
    let n_prompt = ids.len();
    let mut cache = lm.new_cache();
    let t1 = Instant::now();
    let mut input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    for _ in 0..20 {
        let mask = Tensor::ones((1, ids.len()), DType::U32, &Device::Cpu).unwrap();
        let logits = lm.forward_cached(&input, &mask, &mut cache).unwrap();
        let last = logits
            .squeeze(0)
            .unwrap()
            .get(input.dim(1).unwrap() - 1)
            .unwrap();
        let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        ids.push(next);
        if Some(next) == tok.eos_id() {
            break;
        }
        input = Tensor::new(&[next], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
    }
    let gen_s = t1.elapsed().as_secs_f64();
    let answer = tok.decode(&ids[n_prompt..], true).unwrap();
    eprintln!(
        "read_gguf {read_s:.2}s; prompt {n_prompt} tokens; generated {} tokens in {gen_s:.2}s: {answer:?}",
        ids.len() - n_prompt
    );
    assert!(
        answer.contains("Paris"),
        "greedy answer {answer:?} does not mention Paris"
    );

    // The imported directory reloads to the same tokenizer and config.
    let out = std::env::temp_dir().join(format!("keel-io-smollm2-{}", std::process::id()));
    let report = import_gguf(&path, &out).unwrap();
    assert_eq!(report.n_parameters, 134_515_008);
    assert!(report.tied_embeddings && report.has_chat_template);
    let back = Tokenizer::from_dir(&out).unwrap();
    for s in SAMPLES {
        assert_eq!(
            back.encode(s, false).unwrap(),
            tok.encode(s, false).unwrap(),
            "{s:?}"
        );
    }
    assert_eq!(back.chat_template(), tok.chat_template());
    let cfg2 = ModelConfig::from_file(&out.join("config.json")).unwrap();
    assert_eq!(cfg2.num_key_value_heads, 3);
    std::fs::remove_dir_all(&out).ok();
}
