mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keel_rollout::{
    serve, serve_chat, EngineConfig, RemoteClient, RemoteConfig, RolloutBackend, RolloutError,
    SamplingParams, ServeOptions,
};

fn start() -> (keel_rollout::ServerHandle, RemoteClient) {
    let engine = Arc::new(context_engine(EngineConfig::default()));
    let opts = ServeOptions {
        model_name: "toy".into(),
        max_n: 8,
        ..Default::default()
    };
    let handle = serve(engine, "127.0.0.1:0", opts).unwrap();
    assert!(handle.addr().ip().is_loopback());
    let mut cfg = RemoteConfig::new(handle.base_url(), "toy");
    cfg.timeout = Duration::from_secs(30);
    (handle, RemoteClient::new(cfg))
}

/// Raw POST returning (status, parsed JSON body).
fn post(base: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let r = ureq::post(&format!("{base}{path}"))
        .set("Content-Type", "application/json")
        .send_string(body);
    let (status, text) = match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    };
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[test]
fn remote_completions_equal_local_generation() {
    let (handle, client) = start();
    client.health().unwrap();
    assert_eq!(client.models().unwrap(), vec!["toy".to_string()]);

    let local = context_engine(EngineConfig::default());
    let prompts: Vec<String> = vec!["abc".into(), "k".into(), "hhhhhh".into()];
    let params = SamplingParams {
        n: 3,
        max_new_tokens: 10,
        temperature: 0.9,
        top_p: 0.95,
        stop: vec!["jj".into()],
        seed: 77,
        ..Default::default()
    };
    let want = local.generate_groups(&prompts, &params, 4).unwrap();
    let got = client.generate_groups(&prompts, &params, 4).unwrap();
    assert_eq!(
        got, want,
        "text, token ids, logprobs, entropies, finish and prompt ids all agree"
    );
    assert!(want.iter().all(|g| !g.prompt_ids.is_empty()));

    let ids: Vec<Vec<u32>> = want.iter().map(|g| g.prompt_ids.clone()).collect();
    let got_ids = client.complete_ids(&ids, &params, 4).unwrap();
    assert_eq!(got_ids, want);

    let greedy = SamplingParams::greedy(5);
    assert_eq!(
        client.complete_text(&prompts, &greedy, 0).unwrap(),
        local.generate_groups(&prompts, &greedy, 0).unwrap()
    );
    handle.shutdown();
}

#[test]
fn openai_shape_and_token_strings() {
    let (handle, _client) = start();
    let base = handle.base_url();
    let (status, v) = post(
        &base,
        "/v1/completions",
        r#"{"model":"toy","prompt":"ab","max_tokens":3,"temperature":0,"logprobs":1}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    let toks = choice["logprobs"]["tokens"].as_array().unwrap();
    let lps = choice["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(toks.len(), lps.len());
    // without return_tokens_as_token_ids, tokens are the decoded strings and concatenate to the text
    // prompt [a, b]: S = 3, n = 2 -> centre 5 (e); then S = 8, n = 3 -> 11 (k); then 23 mod 12 = 11 (k).
    // Without return_tokens_as_token_ids the tokens are the decoded strings.
    let toks: Vec<&str> = toks.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(toks, vec!["e", "k", "k"]);
    assert_eq!(choice["text"], "ekk");
    assert_eq!(choice["finish_reason"], "length");
    assert!(choice.get("token_ids").is_none());
    let usage = &v["usage"];
    assert_eq!(usage["prompt_tokens"], 2);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        2 + toks.len() as u64
    );
    handle.shutdown();
}

#[test]
fn malformed_requests_get_400_json_errors() {
    let (handle, client) = start();
    let base = handle.base_url();
    let cases: &[(&str, u16, &str)] = &[
        ("{not json", 400, "invalid request body"),
        (r#"{"max_tokens":3}"#, 400, "prompt"),
        (r#"{"prompt":"ab","temperature":-1}"#, 400, "temperature"),
        (r#"{"prompt":"ab","top_p":0}"#, 400, "top_p"),
        (r#"{"prompt":"ab","max_tokens":0}"#, 400, "max_tokens"),
        (r#"{"prompt":"ab","n":9}"#, 400, "server limit"),
        (
            r#"{"prompt":"ab","max_tokens":100000}"#,
            400,
            "server limit",
        ),
        (r#"{"prompt":[]}"#, 400, "empty"),
        (r#"{"prompt":[[1],[]]}"#, 400, "empty"),
        (r#"{"prompt":"zzz"}"#, 400, "encoding prompt"),
        (r#"{"prompt":[1,400]}"#, 400, "outside the vocabulary"),
        (r#"{"prompt":"ab","stream":true}"#, 400, "stream"),
        (r#"{"prompt":"ab","echo":true}"#, 400, "echo"),
        (r#"{"prompt":"ab","model":"gpt-4"}"#, 404, "does not exist"),
    ];
    for (body, status, needle) in cases {
        let (s, v) = post(&base, "/v1/completions", body);
        assert_eq!(s, *status, "{body} -> {v}");
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error for {body}: {v}"));
        assert!(msg.contains(needle), "{body}: {msg}");
        assert_eq!(v["error"]["code"], *status);
    }
    let (s, v) = post(&base, "/v2/nothing", "{}");
    assert_eq!((s, v["error"]["code"].as_u64()), (404, Some(404)));
    let r = ureq::get(&format!("{base}/v1/completions")).call();
    assert!(matches!(r, Err(ureq::Error::Status(405, _))));
    // the client surfaces server errors with status and body
    let err = client
        .complete_text(&["zzz".into()], &SamplingParams::greedy(2), 0)
        .unwrap_err();
    match err {
        RolloutError::RemoteStatus { status, body, .. } => {
            assert_eq!(status, 400);
            assert!(body.contains("encoding prompt"));
        }
        other => panic!("{other}"),
    }
    // the server is still healthy afterwards
    client.health().unwrap();
    handle.shutdown();
}

#[test]
fn oversized_body_is_rejected() {
    let engine = Arc::new(context_engine(EngineConfig::default()));
    let opts = ServeOptions {
        max_body_bytes: 64,
        ..Default::default()
    };
    let handle = serve(engine, "127.0.0.1:0", opts).unwrap();
    let body = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(200));
    let (s, v) = post(&handle.base_url(), "/v1/completions", &body);
    assert_eq!(s, 413, "{v}");
    handle.shutdown();
}

#[test]
fn shutdown_is_clean_and_frees_the_port() {
    let (handle, client) = start();
    client.health().unwrap();
    let addr = handle.addr();
    let t0 = std::time::Instant::now();
    handle.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let mut cfg = client.config().clone();
    cfg.timeout = Duration::from_secs(2);
    let err = RemoteClient::new(cfg).health().unwrap_err();
    assert!(matches!(err, RolloutError::Http { .. }), "{err}");
    // the port can be bound again
    let engine = Arc::new(context_engine(EngineConfig::default()));
    let again = serve(engine, &addr.to_string(), ServeOptions::default()).unwrap();
    drop(again); // dropping the handle also stops the server
}

/// A canned-response server on loopback standing in for vLLM / llama.cpp; answers at most
/// `max_requests` requests, then exits.
fn fake_server(body: &'static str, max_requests: usize) -> (String, std::thread::JoinHandle<()>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap();
    let t = std::thread::spawn(move || {
        for _ in 0..max_requests {
            match server.recv_timeout(Duration::from_secs(10)) {
                Ok(Some(req)) => {
                    let _ = req.respond(tiny_http::Response::from_string(body));
                }
                _ => break,
            }
        }
    });
    (format!("http://{addr}"), t)
}

#[test]
fn client_parses_vllm_style_token_id_strings() {
    // vLLM with return_tokens_as_token_ids but without choice token_ids; two prompts, n = 1,
    // choices out of order.
    let body = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[
        {"index":1,"text":"x","logprobs":{"tokens":["token_id:5"],"token_logprobs":[-0.5],"top_logprobs":[{"token_id:5":-0.5}],"text_offset":[0]},"finish_reason":"length"},
        {"index":0,"text":"hi","logprobs":{"tokens":["token_id:7","token_id:2"],"token_logprobs":[-0.25,-1.0],"top_logprobs":null},"finish_reason":"stop","stop_reason":null}
    ],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}"#;
    let (base, t) = fake_server(body, 1);
    let client = RemoteClient::new(RemoteConfig::new(base, "m"));
    let groups = client
        .complete_text(&["p0".into(), "p1".into()], &SamplingParams::greedy(1), 11)
        .unwrap();
    t.join().unwrap();
    assert_eq!(groups[0].completions[0].token_ids, vec![7, 2]);
    assert_eq!(groups[0].completions[0].logprobs, vec![-0.25, -1.0]);
    assert_eq!(
        groups[0].completions[0].finish,
        keel_core::FinishReason::Stop
    );
    assert_eq!(groups[0].completions[0].text, "hi");
    assert_eq!(groups[1].completions[0].token_ids, vec![5]);
    assert_eq!(
        groups[1].completions[0].finish,
        keel_core::FinishReason::Length
    );
    assert_eq!(groups[1].completions[0].policy_version, 11);
    assert!(
        groups[1].prompt_ids.is_empty(),
        "server did not report prompt ids"
    );
}

#[test]
fn client_requires_token_ids_unless_told_otherwise() {
    // llama.cpp-style: plain token strings, no ids.
    let body = r#"{"choices":[{"index":0,"text":"hi","logprobs":{"tokens":["h","i"],"token_logprobs":[-0.1,-0.2]},"finish_reason":"stop"}]}"#;
    let (base, t) = fake_server(body, 2);
    let strict = RemoteClient::new(RemoteConfig::new(base.clone(), "m"));
    let err = strict
        .complete_text(&["p".into()], &SamplingParams::greedy(2), 0)
        .unwrap_err();
    assert!(
        matches!(err, RolloutError::RemoteProtocol { .. }) && err.to_string().contains("token ids"),
        "{err}"
    );
    let mut cfg = RemoteConfig::new(base, "m");
    cfg.require_token_ids = false;
    let groups = RemoteClient::new(cfg)
        .complete_text(&["p".into()], &SamplingParams::greedy(2), 0)
        .unwrap();
    t.join().unwrap();
    let c = &groups[0].completions[0];
    assert_eq!(
        (c.text.as_str(), c.token_ids.len(), c.logprobs.clone()),
        ("hi", 0, vec![-0.1, -0.2])
    );
}

#[test]
fn client_rejects_inconsistent_responses() {
    let body = r#"{"choices":[{"index":0,"text":"a","logprobs":{"tokens":["token_id:1"],"token_logprobs":[-0.1]},"finish_reason":"stop"}]}"#;
    let (base, t) = fake_server(body, 1);
    let client = RemoteClient::new(RemoteConfig::new(base, "m"));
    // asked for n = 2, got one choice
    let err = client
        .complete_text(
            &["p".into()],
            &SamplingParams {
                n: 2,
                ..SamplingParams::greedy(2)
            },
            0,
        )
        .unwrap_err();
    t.join().unwrap();
    assert!(err.to_string().contains("1 choices for 1 prompts"), "{err}");
}

/// Raw POST of `body` that also returns the `Retry-After` header.
fn post_with_retry(base: &str, body: &str) -> (u16, serde_json::Value, Option<String>) {
    let r = ureq::post(&format!("{base}/v1/completions"))
        .set("Content-Type", "application/json")
        .send_string(body);
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("Retry-After").map(str::to_string);
    let text = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        retry,
    )
}

#[test]
fn prompts_beyond_the_context_window_get_400_with_the_numbers() {
    // Context window 64 tokens; the letters codec makes one token per letter.
    let engine = Arc::new(keel_rollout::Engine::new(
        keel_rollout::toy::ContextModel::new(12, 0.7).with_context_window(64),
        letters_codec(),
        EngineConfig::default(),
    ));
    let handle = serve(engine, "127.0.0.1:0", ServeOptions::default()).unwrap();
    let base = handle.base_url();
    // 48 + 16 = 64 fits exactly; 49 + 16 does not.
    let body = |n: usize| {
        format!(
            r#"{{"prompt":"{}","max_tokens":16,"temperature":0}}"#,
            "a".repeat(n)
        )
    };
    let (s, v) = post(&base, "/v1/completions", &body(48));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 48);
    let (s, v) = post(&base, "/v1/completions", &body(49));
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    for needle in ["49 tokens", "max_tokens is 16", "context window is 64"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // A 1 MB prompt: 400 with its length, and the server keeps serving.
    let (s, v) = post(&base, "/v1/completions", &body(1_000_000));
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("1000000 tokens"), "{msg}");
    // Token-id prompts are checked the same way; the default max_tokens (256) counts too.
    let (s, v) = post(&base, "/v1/completions", r#"{"prompt":[1,2,3]}"#);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens is 256"),
        "{v}"
    );
    let (s, v) = post(&base, "/v1/completions", &body(3));
    assert_eq!(s, 200, "{v}");
    handle.shutdown();
}

#[test]
fn default_body_limit_is_4_mib_and_named_in_the_413() {
    let handle = serve(
        Arc::new(context_engine(EngineConfig::default())),
        "127.0.0.1:0",
        ServeOptions::default(),
    )
    .unwrap();
    let body = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(5 << 20));
    let (s, v) = post(&handle.base_url(), "/v1/completions", &body);
    assert_eq!(s, 413, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("body of {} bytes", body.len())),
        "{msg}"
    );
    assert!(msg.contains(&(4usize << 20).to_string()), "{msg}");
    handle.shutdown();
}

#[test]
fn request_token_positions_are_bounded() {
    let opts = ServeOptions {
        max_request_tokens: 100,
        ..Default::default()
    };
    let handle = serve(
        Arc::new(context_engine(EngineConfig::default())),
        "127.0.0.1:0",
        opts,
    )
    .unwrap();
    let base = handle.base_url();
    // 2 prompts x n 5 x (2 + 10) = 120 > 100; n 4 gives 96.
    let (s, v) = post(
        &base,
        "/v1/completions",
        r#"{"prompt":["ab","cd"],"n":5,"max_tokens":10}"#,
    );
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("120 token positions") && msg.contains("limit of 100"),
        "{msg}"
    );
    let (s, v) = post(
        &base,
        "/v1/completions",
        r#"{"prompt":["ab","cd"],"n":4,"max_tokens":10}"#,
    );
    assert_eq!(s, 200, "{v}");
    handle.shutdown();
}

/// A server over a [`GatedModel`] whose forward passes wait for the returned gate.
fn gated_server(max_pending: usize) -> (keel_rollout::ServerHandle, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let engine = Arc::new(keel_rollout::Engine::new(
        GatedModel {
            inner: keel_rollout::toy::ContextModel::new(12, 0.7),
            gate: Arc::clone(&gate),
        },
        letters_codec(),
        EngineConfig::default(),
    ));
    let opts = ServeOptions {
        max_pending,
        retry_after_s: 7,
        ..Default::default()
    };
    (serve(engine, "127.0.0.1:0", opts).unwrap(), gate)
}

const GATED_BODY: &str = r#"{"prompt":"abc","max_tokens":4,"temperature":0}"#;

/// Starts a completion request on another thread and waits until it is generating (held at the
/// gate); the gate must not have been reached before.
fn start_held_request(
    base: &str,
    gate: &Gate,
) -> std::thread::JoinHandle<(u16, serde_json::Value)> {
    let base = base.to_string();
    let t = std::thread::spawn(move || post(&base, "/v1/completions", GATED_BODY));
    assert!(
        gate.wait_for_arrivals(1, Duration::from_secs(20)),
        "the request never reached the model"
    );
    t
}

#[test]
fn health_answers_during_a_generation_and_a_full_queue_gets_503() {
    let (handle, gate) = gated_server(1);
    let base = handle.base_url();
    let first = start_held_request(&base, &gate);
    // The model is busy (held at the gate): /health and /v1/models still answer at once.
    let t0 = std::time::Instant::now();
    let mut cfg = RemoteConfig::new(base.clone(), "keel");
    cfg.timeout = Duration::from_secs(5);
    RemoteClient::new(cfg.clone()).health().unwrap();
    assert_eq!(
        RemoteClient::new(cfg).models().unwrap(),
        vec!["keel".to_string()]
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The queue (one request) is full: the next completion request is refused at once.
    let (status, v, retry) = post_with_retry(&base, GATED_BODY);
    assert_eq!(status, 503, "{v}");
    assert_eq!(retry.as_deref(), Some("7"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("busy") && msg.contains('1'), "{msg}");
    gate.open();
    let (s, v) = first.join().unwrap();
    assert_eq!(s, 200, "{v}");
    // Once it is done, requests are admitted again.
    let (s, v) = post(&base, "/v1/completions", GATED_BODY);
    assert_eq!(s, 200, "{v}");
    handle.shutdown();
}

#[test]
fn queued_requests_wait_for_the_model_and_bad_ones_are_answered_meanwhile() {
    let (handle, gate) = gated_server(3);
    let base = handle.base_url();
    let first = start_held_request(&base, &gate);
    // Checked before waiting for the model: a bad request or an oversized prompt is answered
    // while another request generates.
    let (s, v) = post(&base, "/v1/completions", r#"{"prompt":"ab","top_p":0}"#);
    assert_eq!(s, 400, "{v}");
    let second = {
        let base = base.clone();
        std::thread::spawn(move || post(&base, "/v1/completions", GATED_BODY))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gate.arrivals(),
        1,
        "one generation at a time: the second waits"
    );
    assert!(!second.is_finished());
    gate.open();
    let (s1, v1) = first.join().unwrap();
    let (s2, v2) = second.join().unwrap();
    assert_eq!((s1, s2), (200, 200), "{v1} {v2}");
    assert_eq!(v1["choices"][0]["text"], v2["choices"][0]["text"]);
    assert_eq!(v1["choices"][0]["text"].as_str().unwrap().len(), 4);
    handle.shutdown();
}

/// A toy chat template over the letters codec: each message is its role letter (`a` system,
/// `b` user, `c` assistant) followed by its content, and the generation prompt is `c`. Two user
/// turns in a row are refused, as real templates refuse non-alternating roles.
fn toy_template(messages: &[keel_core::Message]) -> Result<String, String> {
    use keel_core::Role;
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 && m.role == Role::User && messages[i - 1].role == Role::User {
            return Err("roles must alternate user/assistant".into());
        }
        out.push(match m.role {
            Role::System => 'a',
            Role::User => 'b',
            Role::Assistant => 'c',
        });
        out.push_str(&m.content);
    }
    out.push('c');
    Ok(out)
}

fn start_chat(
    engine: keel_rollout::Engine<keel_rollout::toy::ContextModel, keel_rollout::toy::ToyCodec>,
    opts: ServeOptions,
) -> keel_rollout::ServerHandle {
    serve_chat(
        Arc::new(engine),
        "127.0.0.1:0",
        opts,
        Arc::new(toy_template),
    )
    .unwrap()
}

#[test]
fn chat_completions_answer_as_completions_of_the_rendered_conversation() {
    let handle = start_chat(
        context_engine(EngineConfig::default()),
        ServeOptions::default(),
    );
    let base = handle.base_url();
    let chat = r#"{"model":"keel","messages":[{"role":"system","content":"hh"},{"role":"user","content":"abc"},
        {"role":"assistant","content":"d"},{"role":"user","content":"ke"}],"max_tokens":6,"temperature":0.9,"top_p":0.95,"seed":5,"n":2}"#;
    let (s, c) = post(&base, "/v1/chat/completions", chat);
    assert_eq!(s, 200, "{c}");
    // toy_template renders the conversation as "a hh b abc c d b ke c".
    let (s, p) = post(
        &base,
        "/v1/completions",
        r#"{"prompt":"ahhbabccdbkec","max_tokens":6,"temperature":0.9,"top_p":0.95,"seed":5,"n":2}"#,
    );
    assert_eq!(s, 200, "{p}");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["model"], "keel");
    assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"), "{c}");
    assert_eq!(c["usage"], p["usage"]);
    assert_eq!(c["usage"]["prompt_tokens"], 13);
    let choices = c["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], p["choices"][i]["text"]);
        assert_eq!(choice["finish_reason"], p["choices"][i]["finish_reason"]);
    }
    assert_eq!(choices[0]["message"]["content"].as_str().unwrap().len(), 6);
    // Greedy answers equal the local engine's for the rendered prompt; max_completion_tokens is
    // the newer name of max_tokens.
    let (s, g) = post(
        &base,
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"ab"}],"max_completion_tokens":3,"temperature":0}"#,
    );
    assert_eq!(s, 200, "{g}");
    let local = context_engine(EngineConfig::default());
    let want = local
        .generate_groups(&["babc".to_string()], &SamplingParams::greedy(3), 0)
        .unwrap();
    assert_eq!(
        g["choices"][0]["message"]["content"],
        want[0].completions[0].text.as_str()
    );
    assert_eq!(
        g["choices"][0]["finish_reason"],
        match want[0].completions[0].finish {
            keel_core::FinishReason::Stop => "stop",
            keel_core::FinishReason::Length => "length",
        }
    );
    handle.shutdown();
}

#[test]
fn chat_requests_are_checked_like_completion_requests() {
    let engine = keel_rollout::Engine::new(
        keel_rollout::toy::ContextModel::new(12, 0.7).with_context_window(32),
        letters_codec(),
        EngineConfig::default(),
    );
    let opts = ServeOptions {
        max_body_bytes: 4096,
        ..Default::default()
    };
    let handle = start_chat(engine, opts);
    let base = handle.base_url();
    let user = |content: &str, extra: &str| {
        format!(r#"{{"messages":[{{"role":"user","content":"{content}"}}]{extra}}}"#)
    };
    let two_users = r#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}],"max_tokens":2}"#;
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid request body"),
        (r#"{"messages":[]}"#.into(), 400, "messages is empty"),
        (
            r#"{"messages":[{"role":"tool","content":"a"}]}"#.into(),
            400,
            "invalid request body",
        ),
        (two_users.into(), 400, "roles must alternate"),
        (
            user("ab", r#","max_tokens":2,"stream":true"#),
            400,
            "stream",
        ),
        (
            user("ab", r#","max_tokens":2,"logprobs":true"#),
            400,
            "logprobs",
        ),
        (
            user("ab", r##","max_tokens":2,"model":"gpt-4""##),
            404,
            "does not exist",
        ),
        (user("ab", r#","temperature":-1"#), 400, "temperature"),
        (user("ab", r#","max_tokens":2,"n":65"#), 400, "server limit"),
        (user("zz", r#","max_tokens":2"#), 400, "encoding prompt"),
        // "b" + 27 letters + "c" = 29 tokens; with the 4 new tokens that is more than 32.
        (
            user(&"a".repeat(27), r#","max_tokens":4"#),
            400,
            "29 tokens long and max_tokens is 4",
        ),
        (
            user(&"a".repeat(5000), ""),
            413,
            "exceeds the server limit of 4096 bytes",
        ),
    ];
    for (body, status, needle) in &cases {
        let (s, v) = post(&base, "/v1/chat/completions", body);
        assert_eq!(s, *status, "{body} -> {v}");
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error for {body}: {v}"));
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // 29 tokens + 3 = 32 fits exactly.
    let (s, v) = post(
        &base,
        "/v1/chat/completions",
        &user(&"a".repeat(27), r#","max_tokens":3"#),
    );
    assert_eq!(s, 200, "{v}");
    let r = ureq::get(&format!("{base}/v1/chat/completions")).call();
    assert!(matches!(r, Err(ureq::Error::Status(405, _))));
    handle.shutdown();
    // Without a chat template the route answers 404 and says why.
    let plain = serve(
        Arc::new(context_engine(EngineConfig::default())),
        "127.0.0.1:0",
        ServeOptions::default(),
    )
    .unwrap();
    let (s, v) = post(&plain.base_url(), "/v1/chat/completions", &user("ab", ""));
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no chat template"),
        "{v}"
    );
    plain.shutdown();
}

#[test]
fn health_counts_the_generation_requests_received() {
    let handle = start_chat(
        context_engine(EngineConfig::default()),
        ServeOptions::default(),
    );
    let base = handle.base_url();
    let health = || -> serde_json::Value {
        serde_json::from_str(
            &ureq::get(&format!("{base}/health"))
                .call()
                .unwrap()
                .into_string()
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        health()["requests"],
        serde_json::json!({"completions": 0, "chat_completions": 0})
    );
    let chat = r#"{"messages":[{"role":"user","content":"ab"}],"max_tokens":2}"#;
    assert_eq!(post(&base, "/v1/chat/completions", chat).0, 200);
    assert_eq!(post(&base, "/v1/chat/completions", chat).0, 200);
    // A refused request was still received, and counts.
    assert_eq!(
        post(&base, "/v1/completions", r#"{"prompt":"ab","top_p":0}"#).0,
        400
    );
    // Other routes do not count.
    assert_eq!(post(&base, "/v2/none", "{}").0, 404);
    assert_eq!(
        health()["requests"],
        serde_json::json!({"completions": 1, "chat_completions": 2})
    );
    assert_eq!(
        handle.request_counts(),
        keel_rollout::RequestCounts {
            completions: 1,
            chat_completions: 2
        }
    );
    assert_eq!(health()["status"], "ok");
    handle.shutdown();
}
