//! `keel chat` and `keel serve` with prompts far beyond a model's context window: a clear error
//! with the numbers (exit code 2 / HTTP 400), never an abort, and `keel serve` keeps answering.
//! The model is a tiny random llama with a 256-token context window, written by the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONTEXT: usize = 256;

/// A tiny random model directory (config, weights, tokenizer) with a `CONTEXT`-token window.
fn tiny_model(dir: &Path) {
    let tok = keel_model::train_bpe(&["hello world, how are you today? fine thanks."; 4], 300, &[]).expect("tokenizer");
    let config = keel_model::ModelConfig::from_json(&serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tok.vocab_size(),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": true,
        "eos_token_id": tok.eos_id(),
        "bos_token_id": tok.bos_id(),
        "pad_token_id": tok.pad_id(),
    }))
    .expect("config");
    keel_stages::policy::Policy::from_config(&config, tok, 1).expect("model").save(dir).expect("save");
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `keel chat DIR ARGS` with `stdin` and returns (exit code, stdout, stderr).
fn chat(model: &Path, args: &[&str], stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("chat")
        .arg(model)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel runs");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    // Written from another thread: keel may stop reading (and exit) before taking all of it.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("keel finishes");
    let _ = writer.join();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn chat_refuses_a_1_mb_prompt_and_an_endless_line_with_the_numbers() {
    let dir = temp_dir("chat-limits");
    tiny_model(&dir);
    // A short message is answered (the window holds it plus 8 new tokens).
    let (code, _out, err) = chat(&dir, &["--max-new-tokens", "8"], b"hello\n");
    assert_eq!(code, Some(0), "{err}");
    // 1 MB on one line: exit code 2 (bad input), the token count and both limits in the message.
    let mut big = "hello world ".repeat(1_000_000 / 12).into_bytes();
    big.push(b'\n');
    let (code, _out, err) = chat(&dir, &["--max-new-tokens", "8"], &big);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("context window is {CONTEXT} tokens")), "{err}");
    assert!(err.contains("--max-new-tokens is 8"), "{err}");
    let tokens: usize = err
        .split("is ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token count in: {err}"));
    assert!(tokens > 100_000, "{tokens} tokens for 1 MB: {err}");
    // The window counts the budget too: a prompt that fits alone but not with 1000 new tokens.
    let (code, _out, err) = chat(&dir, &["--prompt", "hello", "--max-new-tokens", "1000"], b"");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--max-new-tokens is 1000"), "{err}");
    // A line with no end (5 MiB, no newline) is refused at the 4 MiB cap instead of read whole.
    let (code, _out, err) = chat(&dir, &[], &vec![b'a'; 5 << 20]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("longer than {} bytes", 4 << 20)), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send head");
    s.write_all(body.as_bytes()).expect("send body");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Kills the server child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_answers_a_1_mb_prompt_with_400_and_stays_healthy() {
    let dir = temp_dir("serve-limits");
    tiny_model(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let _server = Child(
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["serve", dir.to_str().expect("utf-8"), "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("keel serve runs"),
    );
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(60), "keel serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let prompt = "hello world ".repeat(1_000_000 / 12);
    let body = format!(r#"{{"prompt":"{prompt}","max_tokens":16}}"#);
    let (status, text) = http(port, "POST", "/v1/completions", &body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(&format!("context window is {CONTEXT} tokens")) && text.contains("max_tokens is 16"), "{text}");
    let (status, text) = http(port, "GET", "/health", "");
    assert_eq!((status, text.contains("ok")), (200, true), "{text}");
    let (status, text) = http(port, "POST", "/v1/completions", r#"{"prompt":"hello","max_tokens":4,"temperature":0}"#);
    assert_eq!(status, 200, "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn serve_chat_completions_render_the_models_chat_template() {
    let dir = temp_dir("serve-chat");
    tiny_model(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let _server = Child(
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["serve", dir.to_str().expect("utf-8"), "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("keel serve runs"),
    );
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(60), "keel serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let messages = [
        keel_core::Message::new(keel_core::Role::System, "fine thanks"),
        keel_core::Message::new(keel_core::Role::User, "hello world, how are you today?"),
    ];
    let body = serde_json::json!({"model": dir.to_str(), "messages": messages, "max_tokens": 8, "temperature": 0});
    let (status, text) = http(port, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    let chat: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    // The same answer as /v1/completions of the conversation rendered with the model's template.
    let policy = keel_stages::policy::Policy::load(&dir).expect("load");
    let rendered = policy.template.render(&messages, true).expect("render");
    let body = serde_json::json!({"prompt": rendered, "max_tokens": 8, "temperature": 0});
    let (status, text) = http(port, "POST", "/v1/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    let plain: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(chat["choices"][0]["message"]["content"], plain["choices"][0]["text"]);
    assert_eq!(chat["usage"], plain["usage"]);
    assert_eq!(chat["usage"]["prompt_tokens"].as_u64(), Some(policy.encode(&rendered).expect("encode").len() as u64));
    // And as `keel chat` answers the same conversation (greedy; it prints the reply trimmed).
    let (code, out, err) = chat_cmd(&dir, &messages);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), chat["choices"][0]["message"]["content"].as_str().expect("content").trim());
    // The context window is checked before generation, with the numbers.
    let long = serde_json::json!({"messages": [{"role": "user", "content": "hello world ".repeat(400)}], "max_tokens": 8});
    let (status, text) = http(port, "POST", "/v1/chat/completions", &long.to_string());
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(&format!("context window is {CONTEXT} tokens")), "{text}");
    // /health counts both routes.
    let (status, text) = http(port, "GET", "/health", "");
    assert_eq!(status, 200, "{text}");
    let health: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(health["requests"], serde_json::json!({"completions": 1, "chat_completions": 2}));
    std::fs::remove_dir_all(&dir).ok();
}

/// `keel chat DIR --system S --prompt P` at temperature 0 with 8 new tokens.
fn chat_cmd(model: &Path, messages: &[keel_core::Message; 2]) -> (Option<i32>, String, String) {
    chat(
        model,
        &["--system", &messages[0].content, "--prompt", &messages[1].content, "--temperature", "0", "--max-new-tokens", "8"],
        b"",
    )
}
