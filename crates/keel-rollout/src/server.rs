//! An OpenAI-compatible completion server for a local [`Engine`], so `keel serve` can expose a Keel
//! policy to any OpenAI client (and to [`crate::RemoteClient`]): `/v1/completions` always, and
//! `/v1/chat/completions` when it is given a [`ChatRenderer`] (the served model's chat template).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_core::{splitmix64, FinishReason, Message, Role};
use serde_json::json;
use tiny_http::{Header, Method, Request, Response};

use crate::engine::{Engine, KeyedPrompt};
use crate::error::{Result, RolloutError};
use crate::model::{DecodeModel, TextCodec};
use crate::openai::{
    ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChoiceLogprobs, CompletionChoice,
    CompletionRequest, CompletionResponse, PromptInput, Usage,
};
use crate::params::SamplingParams;

/// Server limits and identity; the limits bound the work one request can ask for and how many
/// requests may wait, so one client cannot take the server down or starve the others.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// Name reported by `/v1/models`; requests naming another model get 404.
    pub model_name: String,
    /// Largest accepted request body (413 beyond it, before the body is read).
    pub max_body_bytes: usize,
    /// Most prompts per request.
    pub max_prompts: usize,
    /// Largest `n`.
    pub max_n: usize,
    /// Largest `max_tokens`.
    pub max_tokens_limit: usize,
    /// `max_tokens` when a request omits it.
    pub default_max_tokens: usize,
    /// Most token positions one request may ask for: the sum over its rows (prompt × sample) of
    /// prompt length + `max_tokens`. Bounds the time and KV-cache memory of one request (400
    /// beyond it), since each limit above alone still allows hours of work.
    pub max_request_tokens: usize,
    /// Most completion requests admitted at once (being read, waiting for the model or
    /// generating); one more is answered 503 with `Retry-After` at once. Generation runs one
    /// request at a time (it uses every core through candle), so this bounds the queue.
    pub max_pending: usize,
    /// Seconds advertised in the `Retry-After` header of a 503.
    pub retry_after_s: u64,
    /// Seed family for requests without `seed`: request `k` uses `splitmix64(base_seed ^ k)`, so a
    /// replayed request sequence is reproducible.
    pub base_seed: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            model_name: "keel".into(),
            max_body_bytes: 4 << 20,
            max_prompts: 1024,
            max_n: 64,
            max_tokens_limit: 8192,
            default_max_tokens: 256,
            max_request_tokens: 1 << 22,
            max_pending: 4,
            retry_after_s: 2,
            base_seed: 0,
        }
    }
}

/// Turns a chat conversation into the prompt text the served model was trained on (its chat
/// template, with the generation prompt added). Why a trait: keel-rollout knows no model format;
/// `keel serve` passes keel-model's template, tests a toy one. An `Err` is the reason the
/// conversation cannot be rendered (e.g. the template's "roles must alternate"), sent as a 400.
pub trait ChatRenderer: Send + Sync {
    /// The prompt for `messages`, ending where the assistant's answer begins.
    fn render(&self, messages: &[Message]) -> std::result::Result<String, String>;
}

impl<F> ChatRenderer for F
where
    F: Fn(&[Message]) -> std::result::Result<String, String> + Send + Sync,
{
    fn render(&self, messages: &[Message]) -> std::result::Result<String, String> {
        self(messages)
    }
}

/// How many generation requests a server has received since it started, per route, whatever
/// their answer (200, 400, 503, ...). Why: a client that caches answers (a judge's verdict
/// cache) proves a rerun asked nothing by reading these from `GET /health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestCounts {
    /// `POST /v1/completions` requests.
    pub completions: u64,
    /// `POST /v1/chat/completions` requests.
    pub chat_completions: u64,
}

/// The live counters behind [`RequestCounts`], shared by the accepting thread and the handle.
#[derive(Debug, Default)]
struct Counters {
    completions: AtomicU64,
    chat_completions: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            completions: self.completions.load(Ordering::SeqCst),
            chat_completions: self.chat_completions.load(Ordering::SeqCst),
        }
    }
}

/// A running server; [`ServerHandle::shutdown`] (or dropping the handle) stops it and joins its thread.
pub struct ServerHandle {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, ready for [`crate::RemoteConfig::new`].
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Generation requests received so far (also reported by `GET /health`).
    pub fn request_counts(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// Stops accepting requests, finishes the ones admitted and joins the server threads.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("keel server thread panicked");
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What the request threads share: the engine, the limits, the chat template (if any), the lock
/// that makes generation run one request at a time, the count of admitted generation requests
/// and the per-route request counters.
struct Shared<M, C> {
    engine: Arc<Engine<M, C>>,
    options: ServeOptions,
    chat: Option<Arc<dyn ChatRenderer>>,
    generating: Mutex<()>,
    pending: AtomicUsize,
    counters: Arc<Counters>,
}

/// The two generation routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Completions,
    Chat,
}

/// Releases a completion request's place in the queue when its thread ends, however it ends.
struct PendingSlot<M, C>(Arc<Shared<M, C>>);

impl<M, C> Drop for PendingSlot<M, C> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `engine` on `addr` (e.g. `127.0.0.1:8000`, port 0 for an ephemeral one) with
/// `POST /v1/completions`, `GET /v1/models` and `GET /health` (`{"status": "ok", "requests":
/// {"completions": N, "chat_completions": M}}`, the [`RequestCounts`]). Without a chat template
/// `POST /v1/chat/completions` answers 404; [`serve_chat`] adds it.
///
/// # Concurrency and limits
///
/// One accepting thread answers `/health` and `/v1/models` itself, so they answer while a
/// generation runs. Each completion request gets its own thread, at most
/// [`ServeOptions::max_pending`] at once (the next one is answered 503 with `Retry-After` without
/// reading its body). That thread reads and checks the request — body size (413), sampling
/// parameters, every prompt's length against the model's context window with the request's
/// `max_tokens` (400 with the numbers), the request's total token positions — and only then waits
/// for the model, which generates for one request at a time (candle already uses every core).
///
/// Prompt `i` of a request is keyed by index `i`, so a request with seed `s` returns exactly what
/// [`Engine::generate`] returns for the same prompts and seed, whatever else is being served.
/// Malformed requests get 400 with an OpenAI-style JSON error; `echo` and `stream` are not
/// supported (400).
pub fn serve<M, C>(
    engine: Arc<Engine<M, C>>,
    addr: &str,
    options: ServeOptions,
) -> Result<ServerHandle>
where
    M: DecodeModel + 'static,
    C: TextCodec + 'static,
{
    start(engine, addr, options, None)
}

/// [`serve`] plus `POST /v1/chat/completions`: an OpenAI chat request (`messages` with roles
/// `system`/`user`/`assistant`, `temperature`, `top_p`, `max_tokens` or
/// `max_completion_tokens`, `n`, `stop`, `seed`) is rendered with `chat` and then served exactly
/// as a `/v1/completions` request for the rendered text: the same parameter checks, context-window
/// check before the request waits for the model, body cap and bounded queue, and the same
/// completions for the same seed. The answer is `{id, object: "chat.completion", created, model,
/// choices: [{index, message: {role: "assistant", content}, finish_reason}], usage}`; `stream` and
/// `logprobs` are refused (400).
pub fn serve_chat<M, C>(
    engine: Arc<Engine<M, C>>,
    addr: &str,
    options: ServeOptions,
    chat: Arc<dyn ChatRenderer>,
) -> Result<ServerHandle>
where
    M: DecodeModel + 'static,
    C: TextCodec + 'static,
{
    start(engine, addr, options, Some(chat))
}

fn start<M, C>(
    engine: Arc<Engine<M, C>>,
    addr: &str,
    options: ServeOptions,
    chat: Option<Arc<dyn ChatRenderer>>,
) -> Result<ServerHandle>
where
    M: DecodeModel + 'static,
    C: TextCodec + 'static,
{
    let serve_err = |message: String| RolloutError::Serve {
        addr: addr.to_string(),
        message,
    };
    let server = tiny_http::Server::http(addr).map_err(|e| serve_err(e.to_string()))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| serve_err("bound to a non-IP address".into()))?;
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        engine,
        options,
        chat,
        generating: Mutex::new(()),
        pending: AtomicUsize::new(0),
        counters: Arc::clone(&counters),
    });
    let thread = {
        let server = Arc::clone(&server);
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("keel-serve".into())
            .spawn(move || accept_loop(&server, &stop, &shared))
            .map_err(|e| serve_err(e.to_string()))?
    };
    tracing::info!("keel server listening on http://{bound}");
    Ok(ServerHandle {
        addr: bound,
        server,
        stop,
        thread: Some(thread),
        counters,
    })
}

/// Receives requests until `stop`, answering cheap routes inline and handing each admitted
/// completion request to its own thread; joins those threads before returning.
fn accept_loop<M, C>(server: &tiny_http::Server, stop: &AtomicBool, shared: &Arc<Shared<M, C>>)
where
    M: DecodeModel + 'static,
    C: TextCodec + 'static,
{
    let mut counter = 0u64;
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let req = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(req)) => req,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("keel server: receive failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        counter += 1;
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let route = match (req.method(), path.as_str()) {
            (Method::Post, "/v1/completions") => Route::Completions,
            (Method::Post, "/v1/chat/completions") => Route::Chat,
            (method, _) => {
                let result = light_route(shared, method, &path);
                respond_result(req, result);
                continue;
            }
        };
        let count = match route {
            Route::Completions => &shared.counters.completions,
            Route::Chat => &shared.counters.chat_completions,
        };
        count.fetch_add(1, Ordering::SeqCst);
        if route == Route::Chat && shared.chat.is_none() {
            let none = HttpError::new(
                404,
                "this server has no chat template, so /v1/chat/completions is not served; use                  /v1/completions with a rendered prompt",
            );
            respond_result(req, Err(none));
            continue;
        }
        let limit = shared.options.max_pending;
        if shared.pending.fetch_add(1, Ordering::SeqCst) >= limit {
            shared.pending.fetch_sub(1, Ordering::SeqCst);
            let busy = HttpError::new(
                503,
                format!(
                    "the server is busy: {limit} completion requests are already being served or \
                     waiting; retry later"
                ),
            )
            .retry_after(shared.options.retry_after_s);
            respond_result(req, Err(busy));
            continue;
        }
        let slot = PendingSlot(Arc::clone(shared));
        let spawned = std::thread::Builder::new()
            .name(format!("keel-serve-{counter}"))
            .spawn(move || handle_generation(slot, counter, route, req));
        match spawned {
            Ok(h) => workers.push(h),
            // The closure (request and slot) is dropped: the client sees the connection close.
            Err(e) => tracing::error!("keel server: cannot start a request thread: {e}"),
        }
        join_finished(&mut workers);
    }
    for w in workers {
        if w.join().is_err() {
            tracing::error!("keel server request thread panicked");
        }
    }
}

/// Joins the request threads that have ended, so the list does not grow with every request.
fn join_finished(workers: &mut Vec<JoinHandle<()>>) {
    let (done, running): (Vec<_>, Vec<_>) = workers.drain(..).partition(|h| h.is_finished());
    *workers = running;
    for h in done {
        if h.join().is_err() {
            tracing::error!("keel server request thread panicked");
        }
    }
}

/// An HTTP error with an OpenAI-style body.
struct HttpError {
    status: u16,
    message: String,
    retry_after_s: Option<u64>,
}

impl HttpError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
            retry_after_s: None,
        }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
}

fn respond(req: Request, status: u16, body: &serde_json::Value, retry_after_s: Option<u64>) {
    let mut resp = Response::from_string(body.to_string()).with_status_code(status);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
        resp.add_header(h);
    }
    if let Some(s) = retry_after_s {
        if let Ok(h) = Header::from_bytes("Retry-After", s.to_string()) {
            resp.add_header(h);
        }
    }
    if let Err(e) = req.respond(resp) {
        tracing::warn!("keel server: writing response failed: {e}");
    }
}

fn respond_result(req: Request, result: std::result::Result<serde_json::Value, HttpError>) {
    match result {
        Ok(v) => respond(req, 200, &v, None),
        Err(e) => {
            let kind = if e.status >= 500 {
                "internal_server_error"
            } else {
                "invalid_request_error"
            };
            let body = json!({"error": {"message": e.message, "type": kind, "code": e.status}});
            respond(req, e.status, &body, e.retry_after_s)
        }
    }
}

/// Every route but the two generation routes: answered on the accepting thread, never waiting
/// for the model.
fn light_route<M, C>(
    shared: &Shared<M, C>,
    method: &Method,
    path: &str,
) -> std::result::Result<serde_json::Value, HttpError> {
    let opts = &shared.options;
    match (method, path) {
        (Method::Get, "/health") => {
            let c = shared.counters.snapshot();
            Ok(json!({
                "status": "ok",
                "requests": {"completions": c.completions, "chat_completions": c.chat_completions},
            }))
        }
        (Method::Get, "/v1/models") => Ok(json!({
            "object": "list",
            "data": [{"id": opts.model_name, "object": "model", "created": 0, "owned_by": "keel"}],
        })),
        (_, "/health" | "/v1/models" | "/v1/completions" | "/v1/chat/completions") => {
            Err(HttpError::new(405, "method not allowed"))
        }
        (_, p) => Err(HttpError::new(404, format!("no route for {p}"))),
    }
}

/// Reads, checks and (once the model is free) serves one generation request on its own thread;
/// its place in the queue is released before the response is written, so a client that sends its
/// next request as soon as it has the answer finds the place free.
fn handle_generation<M: DecodeModel, C: TextCodec>(
    slot: PendingSlot<M, C>,
    counter: u64,
    route: Route,
    mut req: Request,
) {
    let shared = &*slot.0;
    let engine = &*shared.engine;
    let opts = &shared.options;
    let result = read_body(&mut req, opts.max_body_bytes)
        .and_then(|body| match (route, &shared.chat) {
            (Route::Chat, Some(chat)) => prepare_chat(engine, opts, &**chat, counter, &body),
            (Route::Chat, None) => Err(HttpError::new(404, "no chat template")),
            (Route::Completions, _) => prepare(engine, opts, counter, &body),
        })
        .and_then(|job| {
            // A panic while holding the lock cannot leave shared state broken (the lock guards
            // no data), so a poisoned lock is simply taken over.
            let _turn = shared
                .generating
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            generate(engine, opts, counter, job)
        });
    drop(slot);
    respond_result(req, result);
}

fn read_body(req: &mut Request, limit: usize) -> std::result::Result<Vec<u8>, HttpError> {
    let too_large = |n: String| {
        HttpError::new(
            413,
            format!("request body of {n} bytes exceeds the server limit of {limit} bytes"),
        )
    };
    if let Some(n) = req.body_length().filter(|&n| n > limit) {
        return Err(too_large(n.to_string()));
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| HttpError::new(400, format!("reading request body: {e}")))?;
    if body.len() > limit {
        return Err(too_large(format!("more than {limit}")));
    }
    Ok(body)
}

/// A checked completion request, ready to generate.
struct Job {
    params: SamplingParams,
    prompt_ids: Vec<Vec<u32>>,
    /// `logprobs` was requested.
    want_logprobs: bool,
    /// `return_tokens_as_token_ids`.
    ids_as_tokens: bool,
    /// `return_token_ids`.
    return_ids: bool,
    /// Answer in the chat format.
    chat: bool,
}

/// 404 unless `model` is absent or the served name.
fn check_model(opts: &ServeOptions, model: &Option<String>) -> std::result::Result<(), HttpError> {
    match model {
        Some(m) if m != &opts.model_name => Err(HttpError::new(
            404,
            format!("The model `{m}` does not exist."),
        )),
        _ => Ok(()),
    }
}

/// The server's own limits on `n` and `max_tokens`.
fn check_limits(
    opts: &ServeOptions,
    params: &SamplingParams,
) -> std::result::Result<(), HttpError> {
    if params.n > opts.max_n {
        return Err(HttpError::new(
            400,
            format!("n = {} exceeds the server limit {}", params.n, opts.max_n),
        ));
    }
    if params.max_new_tokens > opts.max_tokens_limit {
        return Err(HttpError::new(
            400,
            format!(
                "max_tokens = {} exceeds the server limit {}",
                params.max_new_tokens, opts.max_tokens_limit
            ),
        ));
    }
    Ok(())
}

/// Parses and checks a chat request without touching the model: parameters and limits, the
/// conversation rendered with the chat template and encoded, then the same prompt checks as a
/// completion request (context window, total size).
fn prepare_chat<M: DecodeModel, C: TextCodec>(
    engine: &Engine<M, C>,
    opts: &ServeOptions,
    chat: &dyn ChatRenderer,
    counter: u64,
    body: &[u8],
) -> std::result::Result<Job, HttpError> {
    let bad = |m: String| HttpError::new(400, m);
    let req: ChatCompletionRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))?;
    check_model(opts, &req.model)?;
    if req.stream == Some(true) {
        return Err(bad("stream is not supported".into()));
    }
    if req.logprobs == Some(true) {
        return Err(bad(
            "logprobs is not supported on /v1/chat/completions; use /v1/completions".into(),
        ));
    }
    let params = req
        .to_params(
            opts.default_max_tokens,
            splitmix64(opts.base_seed ^ counter),
        )
        .map_err(|e| bad(e.to_string()))?;
    check_limits(opts, &params)?;
    if req.messages.is_empty() {
        return Err(bad("messages is empty".into()));
    }
    let text = chat.render(&req.messages).map_err(|e| {
        bad(format!(
            "rendering the conversation with the chat template: {e}"
        ))
    })?;
    let ids = engine
        .encode_prompt(&text, 0)
        .map_err(|e| bad(e.to_string()))?;
    let prompt_ids = vec![ids];
    check_prompts(engine, opts, &params, &prompt_ids)?;
    Ok(Job {
        params,
        prompt_ids,
        want_logprobs: false,
        ids_as_tokens: false,
        return_ids: false,
        chat: true,
    })
}

/// Parses and checks a request body without touching the model: parameters, server limits,
/// prompts (encoded here), each prompt against the context window, and the request's total size.
fn prepare<M: DecodeModel, C: TextCodec>(
    engine: &Engine<M, C>,
    opts: &ServeOptions,
    counter: u64,
    body: &[u8],
) -> std::result::Result<Job, HttpError> {
    let bad = |m: String| HttpError::new(400, m);
    let mut req: CompletionRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))?;
    check_model(opts, &req.model)?;
    if req.stream == Some(true) {
        return Err(bad("stream is not supported".into()));
    }
    if req.echo == Some(true) {
        return Err(bad("echo is not supported".into()));
    }
    let params = req
        .to_params(
            opts.default_max_tokens,
            splitmix64(opts.base_seed ^ counter),
        )
        .map_err(|e| bad(e.to_string()))?;
    check_limits(opts, &params)?;
    let n_prompts = req.prompt.len();
    if n_prompts == 0 {
        return Err(bad("prompt list is empty".into()));
    }
    if n_prompts > opts.max_prompts {
        return Err(bad(format!(
            "{n_prompts} prompts exceed the server limit {}",
            opts.max_prompts
        )));
    }
    let prompt_ids: Vec<Vec<u32>> =
        match std::mem::replace(&mut req.prompt, PromptInput::Texts(Vec::new())) {
            PromptInput::Text(t) => vec![engine
                .encode_prompt(&t, 0)
                .map_err(|e| bad(e.to_string()))?],
            PromptInput::Texts(ts) => ts
                .iter()
                .enumerate()
                .map(|(i, t)| engine.encode_prompt(t, i).map_err(|e| bad(e.to_string())))
                .collect::<std::result::Result<_, _>>()?,
            PromptInput::Ids(ids) => vec![ids],
            PromptInput::IdLists(l) => l,
        };
    check_prompts(engine, opts, &params, &prompt_ids)?;
    Ok(Job {
        params,
        prompt_ids,
        want_logprobs: req.logprobs.is_some(),
        ids_as_tokens: req.return_tokens_as_token_ids == Some(true),
        return_ids: req.return_token_ids == Some(true),
        chat: false,
    })
}

/// Every prompt non-empty and within the context window with `max_tokens`, and the request's
/// total token positions within the server limit.
fn check_prompts<M: DecodeModel, C: TextCodec>(
    engine: &Engine<M, C>,
    opts: &ServeOptions,
    params: &SamplingParams,
    prompt_ids: &[Vec<u32>],
) -> std::result::Result<(), HttpError> {
    let bad = |m: String| HttpError::new(400, m);
    for (i, ids) in prompt_ids.iter().enumerate() {
        if ids.is_empty() {
            return Err(bad(RolloutError::EmptyPrompt { index: i }.to_string()));
        }
        if let Err(RolloutError::ContextOverflow {
            prompt_tokens,
            context,
            ..
        }) = engine.check_context(i, ids.len(), params.max_new_tokens)
        {
            return Err(bad(format!(
                "prompt {i} is {prompt_tokens} tokens long and max_tokens is {}, but the model's \
                 context window is {context} tokens (prompt tokens + max_tokens must not exceed \
                 it); shorten the prompt or lower max_tokens",
                params.max_new_tokens
            )));
        }
    }
    let positions = prompt_ids.iter().fold(0usize, |acc, ids| {
        acc.saturating_add(
            ids.len()
                .saturating_add(params.max_new_tokens)
                .saturating_mul(params.n),
        )
    });
    if positions > opts.max_request_tokens {
        return Err(bad(format!(
            "the request asks for {positions} token positions ({} prompts x n = {} x (prompt \
             tokens + max_tokens = {})), more than the server limit of {}; send fewer prompts or \
             lower n or max_tokens",
            prompt_ids.len(),
            params.n,
            params.max_new_tokens,
            opts.max_request_tokens
        )));
    }
    Ok(())
}

/// Generates the completions of a checked request and builds the OpenAI response.
fn generate<M: DecodeModel, C: TextCodec>(
    engine: &Engine<M, C>,
    opts: &ServeOptions,
    counter: u64,
    job: Job,
) -> std::result::Result<serde_json::Value, HttpError> {
    let bad = |m: String| HttpError::new(400, m);
    let Job {
        params,
        prompt_ids,
        want_logprobs,
        ids_as_tokens,
        return_ids,
        chat,
    } = job;
    let n_prompts = prompt_ids.len();
    let keyed: Vec<KeyedPrompt<'_>> = prompt_ids
        .iter()
        .enumerate()
        .map(|(i, ids)| KeyedPrompt {
            ids,
            index: i as u64,
        })
        .collect();
    let groups = engine
        .generate_keyed(&keyed, &params, 0)
        .map_err(|e| match e {
            RolloutError::InvalidParams { .. }
            | RolloutError::EmptyPrompt { .. }
            | RolloutError::ContextOverflow { .. } => bad(e.to_string()),
            other => HttpError::new(500, other.to_string()),
        })?;
    let finish_name = |f: FinishReason| match f {
        FinishReason::Stop => "stop".to_string(),
        FinishReason::Length => "length".to_string(),
    };
    let prompt_tokens: usize = prompt_ids.iter().map(Vec::len).sum();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if chat {
        let mut completion_tokens = 0usize;
        let choices = groups
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(s, c)| {
                completion_tokens += c.token_ids.len();
                ChatChoice {
                    index: s,
                    message: Message::new(Role::Assistant, c.text),
                    finish_reason: Some(finish_name(c.finish)),
                }
            })
            .collect();
        let resp = ChatCompletionResponse {
            id: format!("chatcmpl-keel-{counter}"),
            object: "chat.completion".into(),
            created,
            model: opts.model_name.clone(),
            choices,
            usage: Some(Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            }),
        };
        return serde_json::to_value(resp).map_err(|e| HttpError::new(500, e.to_string()));
    }

    let mut choices = Vec::with_capacity(n_prompts * params.n);
    let mut completion_tokens = 0usize;
    for (p, group) in groups.into_iter().enumerate() {
        for (s, c) in group.into_iter().enumerate() {
            completion_tokens += c.token_ids.len();
            let logprobs = if want_logprobs {
                let tokens = c
                    .token_ids
                    .iter()
                    .map(|&t| {
                        if ids_as_tokens {
                            Ok(format!("token_id:{t}"))
                        } else {
                            engine
                                .codec()
                                .decode(&[t])
                                .map_err(|e| HttpError::new(500, e.to_string()))
                        }
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Some(ChoiceLogprobs {
                    tokens,
                    // f32 -> f64 is exact, so the client recovers the f32 values bit for bit.
                    token_logprobs: c.logprobs.iter().map(|&x| Some(x as f64)).collect(),
                    top_logprobs: None,
                    text_offset: None,
                    token_entropies: Some(c.entropies.iter().map(|&x| x as f64).collect()),
                })
            } else {
                None
            };
            choices.push(CompletionChoice {
                index: p * params.n + s,
                text: c.text,
                logprobs,
                finish_reason: Some(finish_name(c.finish)),
                token_ids: return_ids.then_some(c.token_ids),
                prompt_token_ids: return_ids.then(|| prompt_ids[p].clone()),
            });
        }
    }
    let resp = CompletionResponse {
        id: format!("cmpl-keel-{counter}"),
        object: "text_completion".into(),
        created,
        model: opts.model_name.clone(),
        choices,
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }),
    };
    serde_json::to_value(resp).map_err(|e| HttpError::new(500, e.to_string()))
}
