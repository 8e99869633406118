//! GGUF import on a tiny llama-architecture file written by the test itself: known tensors in
//! F32, F16, Q8_0, Q4_0 and Q4_1 (raw blocks built by hand, so the expected values do not depend
//! on candle's quantiser), permuted Q/K rows, llama metadata and a tiny GPT-2 vocabulary.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use keel_core::{Message, Role};
use keel_model::gguf::{config_from_metadata, gguf_to_hf_name, permute_qk, unpermute_qk};
use keel_model::{import_gguf, read_gguf, ChatTemplate, Tokenizer};

const SMOLLM2_TEMPLATE: &str = include_str!("io_fixtures/smollm2_chat_template.jinja");

const HIDDEN: usize = 64;
const N_HEAD: usize = 2;
const N_KV: usize = 1;
const HEAD_DIM: usize = HIDDEN / N_HEAD;
const FFN: usize = 64;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-io-gguf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 onwards.
fn byte_chars() -> Vec<char> {
    let mut direct: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut out = vec!['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        if direct.contains(&b) {
            out[b as usize] = char::from_u32(b).unwrap();
        } else {
            out[b as usize] = char::from_u32(256 + n).unwrap();
            n += 1;
        }
    }
    direct.clear();
    out
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [&str; 9] = [
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
];

fn vocab_tokens() -> Vec<String> {
    let mut toks: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    toks.extend(byte_chars().into_iter().map(|c| c.to_string()));
    for m in MERGES {
        toks.push(m.replace(' ', ""));
    }
    toks
}

/// Q8_0 blocks: f16 scale + 32 i8. Scale and quants chosen so every value is exact.
fn q8_0(rows: usize, cols: usize) -> (QTensor, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for b in 0..rows * cols / 32 {
        let d = [0.5f32, 0.25, 0.125, 1.0][b % 4];
        bytes.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for i in 0..32usize {
            let q = ((i as i32 * 7 + b as i32 * 3) % 255 - 127) as i8;
            bytes.push(q as u8);
            expected.push(q as f32 * d);
        }
    }
    (
        qtensor_from_ggml(GgmlDType::Q8_0, &bytes, vec![rows, cols], &Device::Cpu).unwrap(),
        expected,
    )
}

/// Q4_0 blocks: f16 scale + 16 bytes; element j is (low nibble of byte j) - 8, element j+16 the high nibble.
fn q4_0(rows: usize, cols: usize) -> (QTensor, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for b in 0..rows * cols / 32 {
        let d = [0.5f32, 0.25, 2.0][b % 3];
        bytes.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        let nib = |i: usize| ((i * 5 + b) % 16) as u8;
        let mut block = [0f32; 32];
        for j in 0..16 {
            let (lo, hi) = (nib(j), nib(j + 16));
            bytes.push(lo | (hi << 4));
            block[j] = (lo as f32 - 8.0) * d;
            block[j + 16] = (hi as f32 - 8.0) * d;
        }
        expected.extend_from_slice(&block);
    }
    (
        qtensor_from_ggml(GgmlDType::Q4_0, &bytes, vec![rows, cols], &Device::Cpu).unwrap(),
        expected,
    )
}

/// Q4_1 blocks: f16 scale, f16 minimum, 16 bytes; value = nibble * d + m.
fn q4_1(rows: usize, cols: usize) -> (QTensor, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for b in 0..rows * cols / 32 {
        let d = [0.25f32, 0.5][b % 2];
        let m = [-1.0f32, -2.5, 0.75][b % 3];
        bytes.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        bytes.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        let nib = |i: usize| ((i * 3 + b * 7) % 16) as u8;
        let mut block = [0f32; 32];
        for j in 0..16 {
            let (lo, hi) = (nib(j), nib(j + 16));
            bytes.push(lo | (hi << 4));
            block[j] = lo as f32 * d + m;
            block[j + 16] = hi as f32 * d + m;
        }
        expected.extend_from_slice(&block);
    }
    (
        qtensor_from_ggml(GgmlDType::Q4_1, &bytes, vec![rows, cols], &Device::Cpu).unwrap(),
        expected,
    )
}

fn f16_tensor(rows: usize, cols: usize) -> (QTensor, Vec<f32>) {
    let expected: Vec<f32> = (0..rows * cols)
        .map(|i| ((i % 97) as f32 - 48.0) / 8.0)
        .collect();
    let bytes: Vec<u8> = expected
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    (
        qtensor_from_ggml(GgmlDType::F16, &bytes, vec![rows, cols], &Device::Cpu).unwrap(),
        expected,
    )
}

fn f32_tensor(dims: Vec<usize>, values: &[f32]) -> QTensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    qtensor_from_ggml(GgmlDType::F32, &bytes, dims, &Device::Cpu).unwrap()
}

/// The Hugging Face -> GGUF row order, written independently of the library: HF row
/// `h*hd + t*hd/2 + j` is stored at GGUF row `h*hd + 2*j + t`.
fn gguf_row_of_hf_row(r: usize, head_dim: usize) -> usize {
    let (h, within) = (r / head_dim, r % head_dim);
    let (t, j) = (within / (head_dim / 2), within % (head_dim / 2));
    h * head_dim + 2 * j + t
}

/// `value(r, c) = r * 1000 + c` in Hugging Face row order, stored in GGUF (permuted) order.
fn permuted_qk(rows: usize, head_dim: usize) -> (QTensor, Vec<f32>) {
    let hf: Vec<f32> = (0..rows * HIDDEN)
        .map(|i| ((i / HIDDEN) * 1000 + i % HIDDEN) as f32)
        .collect();
    let mut gguf = vec![0f32; rows * HIDDEN];
    for r in 0..rows {
        let g = gguf_row_of_hf_row(r, head_dim);
        gguf[g * HIDDEN..(g + 1) * HIDDEN].copy_from_slice(&hf[r * HIDDEN..(r + 1) * HIDDEN]);
    }
    (f32_tensor(vec![rows, HIDDEN], &gguf), hf)
}

struct Fixture {
    path: PathBuf,
    expected: HashMap<String, Vec<f32>>,
    vocab: Vec<String>,
}

fn write_tiny_gguf(dir: &Path, with_output: bool) -> Fixture {
    write_gguf_with(dir, with_output, |_, _| {})
}

/// The tiny file of [`write_tiny_gguf`], after `tweak` has edited its metadata and tensors.
fn write_gguf_with(
    dir: &Path,
    with_output: bool,
    tweak: impl FnOnce(&mut Vec<(&'static str, Value)>, &mut Vec<(String, QTensor)>),
) -> Fixture {
    let vocab = vocab_tokens();
    let n_vocab = vocab.len();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut expected = HashMap::new();
    let mut add = |gguf: &str, hf: &str, (q, e): (QTensor, Vec<f32>)| {
        tensors.push((gguf.to_string(), q));
        expected.insert(hf.to_string(), e);
    };
    add(
        "token_embd.weight",
        "model.embed_tokens.weight",
        q8_0(n_vocab, HIDDEN),
    );
    add(
        "blk.0.attn_q.weight",
        "model.layers.0.self_attn.q_proj.weight",
        permuted_qk(N_HEAD * HEAD_DIM, HEAD_DIM),
    );
    add(
        "blk.0.attn_k.weight",
        "model.layers.0.self_attn.k_proj.weight",
        permuted_qk(N_KV * HEAD_DIM, HEAD_DIM),
    );
    add(
        "blk.0.attn_v.weight",
        "model.layers.0.self_attn.v_proj.weight",
        q4_0(N_KV * HEAD_DIM, HIDDEN),
    );
    add(
        "blk.0.attn_output.weight",
        "model.layers.0.self_attn.o_proj.weight",
        q8_0(HIDDEN, HIDDEN),
    );
    add(
        "blk.0.ffn_gate.weight",
        "model.layers.0.mlp.gate_proj.weight",
        q4_1(FFN, HIDDEN),
    );
    add(
        "blk.0.ffn_up.weight",
        "model.layers.0.mlp.up_proj.weight",
        f16_tensor(FFN, HIDDEN),
    );
    add(
        "blk.0.ffn_down.weight",
        "model.layers.0.mlp.down_proj.weight",
        q4_0(HIDDEN, FFN),
    );
    let norm: Vec<f32> = (0..HIDDEN).map(|i| 1.0 + i as f32 / 64.0).collect();
    add(
        "blk.0.attn_norm.weight",
        "model.layers.0.input_layernorm.weight",
        (f32_tensor(vec![HIDDEN], &norm), norm.clone()),
    );
    let norm2: Vec<f32> = norm.iter().map(|v| v * 0.5).collect();
    add(
        "blk.0.ffn_norm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        (f32_tensor(vec![HIDDEN], &norm2), norm2.clone()),
    );
    let norm3: Vec<f32> = norm.iter().map(|v| v - 0.25).collect();
    add(
        "output_norm.weight",
        "model.norm.weight",
        (f32_tensor(vec![HIDDEN], &norm3), norm3.clone()),
    );
    if with_output {
        add("output.weight", "lm_head.weight", q8_0(n_vocab, HIDDEN));
    }
    // A tensor without a Hugging Face counterpart must be skipped, not fail the import.
    tensors.push((
        "rope_freqs.weight".into(),
        f32_tensor(vec![HEAD_DIM / 2], &[1.0; HEAD_DIM / 2]),
    ));

    let s = |x: &str| Value::String(x.to_string());
    let mut types = vec![Value::I32(3); SPECIALS.len()];
    types.extend(std::iter::repeat_n(Value::I32(1), n_vocab - SPECIALS.len()));
    let mut metadata: Vec<(&'static str, Value)> = vec![
        ("general.architecture", s("llama")),
        ("general.name", s("keel tiny test")),
        ("llama.context_length", Value::U32(128)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.block_count", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(N_HEAD as u32)),
        ("llama.attention.head_count_kv", Value::U32(N_KV as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.rope.dimension_count", Value::U32(HEAD_DIM as u32)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vocab.iter().map(|t| s(t)).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(MERGES.iter().map(|m| s(m)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.padding_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", s(SMOLLM2_TEMPLATE)),
    ];
    tweak(&mut metadata, &mut tensors);
    let path = dir.join("tiny.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts).unwrap();
    Fixture {
        path,
        expected,
        vocab,
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn gguf_permutation_hand_worked() {
    // One head, head_dim 4: HF rows [r0, r1 | r2, r3] (two rotary halves) are stored by
    // llama.cpp as interleaved pairs [r0, r2, r1, r3].
    let hf = Tensor::new(
        &[[0f32, 0.5], [1., 1.5], [2., 2.5], [3., 3.5]],
        &Device::Cpu,
    )
    .unwrap();
    let g = permute_qk(&hf, 1).unwrap();
    assert_eq!(
        g.to_vec2::<f32>().unwrap(),
        vec![vec![0., 0.5], vec![2., 2.5], vec![1., 1.5], vec![3., 3.5]]
    );
    assert_eq!(
        unpermute_qk(&g, 1).unwrap().to_vec2::<f32>().unwrap(),
        hf.to_vec2::<f32>().unwrap()
    );

    // One head, head_dim 8, as a bias vector: [0..4 | 4..8] -> [0,4,1,5,2,6,3,7].
    let b = Tensor::arange(0f32, 8., &Device::Cpu).unwrap();
    assert_eq!(
        permute_qk(&b, 1).unwrap().to_vec1::<f32>().unwrap(),
        vec![0., 4., 1., 5., 2., 6., 3., 7.]
    );
    assert_eq!(
        unpermute_qk(
            &Tensor::new(&[0f32, 4., 1., 5., 2., 6., 3., 7.], &Device::Cpu).unwrap(),
            1
        )
        .unwrap()
        .to_vec1::<f32>()
        .unwrap(),
        (0..8).map(|x| x as f32).collect::<Vec<_>>()
    );

    // Two heads of 4: each head is permuted on its own.
    let b = Tensor::arange(0f32, 8., &Device::Cpu).unwrap();
    assert_eq!(
        permute_qk(&b, 2).unwrap().to_vec1::<f32>().unwrap(),
        vec![0., 2., 1., 3., 4., 6., 5., 7.]
    );

    // Round trip on a larger matrix, and the independent index formula agrees.
    let w = Tensor::arange(0f32, (96 * 3) as f32, &Device::Cpu)
        .unwrap()
        .reshape((96, 3))
        .unwrap();
    let p = permute_qk(&w, 3).unwrap();
    assert_eq!(values(&unpermute_qk(&p, 3).unwrap()), values(&w));
    let pv = p.to_vec2::<f32>().unwrap();
    for r in 0..96 {
        assert_eq!(pv[gguf_row_of_hf_row(r, 32)][0], (r * 3) as f32, "row {r}");
    }
    // Odd head sizes are rejected with the reason.
    let err = unpermute_qk(
        &Tensor::zeros((6, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        2,
    )
    .unwrap_err();
    assert!(err.to_string().contains("heads of even size"), "{err}");
}

#[test]
fn gguf_tensor_names_map_to_hugging_face() {
    let cases = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.12.attn_q.weight",
            "model.layers.12.self_attn.q_proj.weight",
        ),
        ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias"),
        (
            "blk.3.attn_v.weight",
            "model.layers.3.self_attn.v_proj.weight",
        ),
        (
            "blk.3.attn_output.weight",
            "model.layers.3.self_attn.o_proj.weight",
        ),
        (
            "blk.3.attn_q_norm.weight",
            "model.layers.3.self_attn.q_norm.weight",
        ),
        (
            "blk.3.ffn_gate.weight",
            "model.layers.3.mlp.gate_proj.weight",
        ),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
        (
            "blk.3.ffn_down.weight",
            "model.layers.3.mlp.down_proj.weight",
        ),
        (
            "blk.3.attn_norm.weight",
            "model.layers.3.input_layernorm.weight",
        ),
        (
            "blk.3.ffn_norm.weight",
            "model.layers.3.post_attention_layernorm.weight",
        ),
    ];
    for (g, hf) in cases {
        assert_eq!(gguf_to_hf_name(g).as_deref(), Some(hf), "{g}");
    }
    assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    assert_eq!(gguf_to_hf_name("blk.x.attn_q.weight"), None);
}

#[test]
fn gguf_read_dequantises_renames_and_unpermutes() {
    let dir = scratch("read");
    let fx = write_tiny_gguf(&dir, false);
    let m = read_gguf(&fx.path).unwrap();
    assert_eq!(m.architecture, "llama");
    assert_eq!(
        m.tensors.len(),
        fx.expected.len(),
        "names: {:?}",
        m.tensors.keys().collect::<Vec<_>>()
    );
    for (name, want) in &fx.expected {
        let t = m
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(t.dtype(), candle_core::DType::F32);
        assert_eq!(values(t), *want, "values of {name}");
    }
    assert_eq!(
        m.tensors["model.embed_tokens.weight"].dims(),
        &[fx.vocab.len(), HIDDEN]
    );
    assert_eq!(
        m.tensors["model.layers.0.self_attn.k_proj.weight"].dims(),
        &[N_KV * HEAD_DIM, HIDDEN]
    );
    assert_eq!(
        m.tensors["model.layers.0.mlp.down_proj.weight"].dims(),
        &[HIDDEN, FFN]
    );
    assert!(
        m.warnings.iter().any(|w| w.contains("rope_freqs.weight")),
        "{:?}",
        m.warnings
    );
    assert_eq!(m.source_dtypes.get("Q8_0"), Some(&2));
    assert_eq!(m.source_dtypes.get("Q4_0"), Some(&2));
    assert_eq!(m.source_dtypes.get("Q4_1"), Some(&1));
    assert_eq!(m.source_dtypes.get("F16"), Some(&1));
    assert_eq!(m.source_dtypes.get("F32"), Some(&5));

    let c = &m.config;
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], HIDDEN as u64);
    assert_eq!(c["intermediate_size"], FFN as u64);
    assert_eq!(c["num_hidden_layers"], 1);
    assert_eq!(c["num_attention_heads"], N_HEAD as u64);
    assert_eq!(c["num_key_value_heads"], N_KV as u64);
    assert_eq!(c["head_dim"], HEAD_DIM as u64);
    assert_eq!(c["max_position_embeddings"], 128);
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(c["rope_theta"].as_f64(), Some(10000.0));
    assert_eq!(c["vocab_size"], fx.vocab.len() as u64);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(c["hidden_act"], "silu");

    // Tokenizer rebuilt from the GGUF vocabulary.
    let tok = &m.tokenizer;
    assert_eq!(tok.vocab_size(), fx.vocab.len());
    let id = |t: &str| fx.vocab.iter().position(|v| v == t).unwrap() as u32;
    assert_eq!(
        tok.encode("hello world", false).unwrap(),
        vec![id("hello"), id("Ġworld")]
    );
    assert_eq!(
        tok.decode(&[id("hello"), id("Ġworld")], false).unwrap(),
        "hello world"
    );
    // smollm pre-tokenizer: digits are split one by one, even after a space.
    assert_eq!(
        tok.encode("x 12", false).unwrap(),
        vec![id("x"), id("Ġ"), id("1"), id("2")]
    );
    assert_eq!(
        tok.encode("<|im_start|>hello<|im_end|>", false).unwrap(),
        vec![1, id("hello"), 2]
    );
    assert_eq!(tok.decode(&[1, id("hello"), 2], true).unwrap(), "hello");
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(tok.chat_template(), Some(SMOLLM2_TEMPLATE));
    assert_eq!(m.chat_template.as_deref(), Some(SMOLLM2_TEMPLATE));
    let text = "héllo wörld ✓ 🚀 fn main() { let x = 42; }";
    assert_eq!(
        tok.decode(&tok.encode(text, false).unwrap(), false)
            .unwrap(),
        text
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gguf_import_writes_a_hugging_face_directory() {
    let dir = scratch("import");
    let fx = write_tiny_gguf(&dir, true);
    let out = dir.join("hf");
    let report = import_gguf(&fx.path, &out).unwrap();
    assert_eq!(report.architecture, "llama");
    assert_eq!(report.n_tensors, fx.expected.len());
    assert!(!report.tied_embeddings);
    assert!(report.has_chat_template);
    let n_params: usize = fx.expected.values().map(Vec::len).sum();
    assert_eq!(report.n_parameters, n_params);
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let weights =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(weights.len(), fx.expected.len());
    for (name, want) in &fx.expected {
        assert_eq!(values(&weights[name]), *want, "{name}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tie_word_embeddings"], false);
    assert_eq!(config["num_key_value_heads"], 1);

    // The written tokenizer directory loads back to the same tokenizer and chat template.
    let tok = Tokenizer::from_dir(&out).unwrap();
    let id = |t: &str| fx.vocab.iter().position(|v| v == t).unwrap() as u32;
    assert_eq!(
        tok.encode("hello world", false).unwrap(),
        vec![id("hello"), id("Ġworld")]
    );
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.bos_id(), Some(1));
    let tmpl = ChatTemplate::from_tokenizer(&tok).unwrap();
    let rendered = tmpl
        .render(&[Message::new(Role::User, "hello")], true)
        .unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gguf_errors_name_the_file() {
    let dir = scratch("errors");
    let missing = dir.join("nope.gguf");
    let err = read_gguf(&missing).unwrap_err().to_string();
    assert!(err.contains("nope.gguf"), "{err}");
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"not a gguf file at all").unwrap();
    let err = read_gguf(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.gguf"), "{err}");

    // Unsupported architecture: the message names it.
    let md: HashMap<String, Value> = [(
        "general.architecture".to_string(),
        Value::String("mamba".into()),
    )]
    .into();
    let err = config_from_metadata(&md, 10, true).unwrap_err().to_string();
    assert!(err.contains("mamba"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 19 row 13: a GGUF whose metadata claims 100,000 blocks (tensors for one), a tensor whose
/// shape contradicts the metadata, or tensor data beyond the end of the file is refused at import
/// with a message naming the file and the inconsistency, and nothing is written.
#[test]
fn gguf_inconsistent_with_its_metadata_is_refused_at_import() {
    let set = |md: &mut Vec<(&'static str, Value)>, key: &str, v: Value| {
        md.iter_mut().find(|(k, _)| *k == key).unwrap().1 = v;
    };
    let dir = scratch("blocks");
    let fx = write_gguf_with(&dir, false, |md, _| set(md, "llama.block_count", Value::U32(100_000)));
    let out = dir.join("out");
    let err = import_gguf(&fx.path, &out).unwrap_err().to_string();
    assert!(err.contains("tiny.gguf") && err.contains("block_count") && err.contains("100000"), "{err}");
    assert!(err.contains("1 blocks (blk.0 … blk.0)"), "{err}");
    assert!(!out.join("model.safetensors").exists() && !out.join("config.json").exists());

    // A tensor shape that contradicts the metadata (ffn_up with twice the rows).
    let dir = scratch("shape");
    let fx = write_gguf_with(&dir, false, |_, ts| {
        ts.iter_mut().find(|(n, _)| n == "blk.0.ffn_up.weight").unwrap().1 = f16_tensor(2 * FFN, HIDDEN).0;
    });
    let err = import_gguf(&fx.path, dir.join("out")).unwrap_err().to_string();
    assert!(err.contains("blk.0.ffn_up.weight") && err.contains(&format!("[{}, {HIDDEN}]", 2 * FFN)), "{err}");
    assert!(err.contains(&format!("[{FFN}, {HIDDEN}]")), "{err}");

    // A required tensor missing (no attention output projection).
    let dir = scratch("missing");
    let fx = write_gguf_with(&dir, false, |_, ts| ts.retain(|(n, _)| n != "blk.0.attn_output.weight"));
    let err = read_gguf(&fx.path).unwrap_err().to_string();
    assert!(err.contains("model.layers.0.self_attn.o_proj.weight") && err.contains("missing"), "{err}");

    // Truncated: the last tensor's data runs past the end of the file.
    let dir = scratch("truncated");
    let fx = write_tiny_gguf(&dir, false);
    let bytes = std::fs::read(&fx.path).unwrap();
    std::fs::write(&fx.path, &bytes[..bytes.len() - 100]).unwrap();
    let err = read_gguf(&fx.path).unwrap_err().to_string();
    assert!(err.contains("does not fit in the file"), "{err}");

    // Absurd sizes in the metadata are refused by the config limits, naming the key's meaning.
    let dir = scratch("absurd");
    let fx = write_gguf_with(&dir, false, |md, _| set(md, "llama.embedding_length", Value::U32(1 << 30)));
    let err = read_gguf(&fx.path).unwrap_err().to_string();
    assert!(err.contains("hidden_size") && err.contains(&(1u64 << 30).to_string()), "{err}");
    for name in ["blocks", "shape", "missing", "truncated", "absurd"] {
        std::fs::remove_dir_all(std::env::temp_dir().join(format!("keel-io-gguf-{}-{name}", std::process::id()))).ok();
    }
}

/// The GGUF reader under a bounded-time fuzz harness (issue 19 item 6): 256 deterministic
/// mutations of the tiny file (flipped bytes, extreme lengths/counts/offsets written into the
/// header, truncations, random bytes). `read_gguf` and `read_gguf_tokenizer` must return `Ok` or a
/// clear error naming the file, in bounded time and memory: no panic, hang or abort. Whatever
/// reads must also build a model (the inventory check guarantees the tensors fit the config).
#[test]
fn gguf_fuzz_mutated_files_never_panic() {
    use common::fuzz::{mutate, mutation, runner, within};
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::time::Duration;
    let dir = scratch("fuzz");
    let fx = write_tiny_gguf(&dir, true);
    let good = std::fs::read(&fx.path).unwrap();
    // The header (metadata and tensor infos) is everything before the vocabulary's tensors; the
    // first 4 KiB hold the counts, the architecture keys and the start of the token list.
    let header = 4096.min(good.len());
    let path = dir.join("mutated.gguf");
    let (read, refused) = (Cell::new(0), Cell::new(0));
    runner(256)
        .run(&mutation(), |m| {
            std::fs::write(&path, mutate(&good, &m, header)).unwrap();
            let g = within(Duration::from_secs(10), "read_gguf", || read_gguf(&path))?;
            let t = within(Duration::from_secs(10), "read_gguf_tokenizer", || keel_model::read_gguf_tokenizer(&path))?;
            if let Err(e) = &t {
                prop_assert!(e.to_string().contains("mutated.gguf"), "{e}");
            }
            match g {
                Ok(g) => {
                    let cfg = keel_model::ModelConfig::from_json(&g.config);
                    prop_assert!(cfg.is_ok(), "{:?}", cfg.err());
                    let built = keel_model::CausalLm::from_tensors(cfg.unwrap(), g.tensors);
                    prop_assert!(built.is_ok(), "{:?}", built.err());
                    read.set(read.get() + 1);
                }
                Err(e) => {
                    prop_assert!(e.to_string().contains("mutated.gguf"), "{e}");
                    refused.set(refused.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    let (read, refused) = (read.get(), refused.get());
    println!("{read} mutated files read, {refused} refused");
    assert!(refused > 100, "{read} read, {refused} refused");
    std::fs::remove_dir_all(&dir).ok();
}
