//! Small stage kinds for tests, examples and documentation.
//!
//! They move `i64` messages (port type `int`) and record what they do into a shared [`Recorder`],
//! so tests can check timing (stages overlap), memory bounds (items in flight) and failure handling
//! without any ML. Register them with [`register`] or get a registry holding only them from
//! [`registry`].
//!
//! | kind | ports | what it does |
//! |---|---|---|
//! | `counter` | out `out` | emits `count` integers (`start`, `start+1`, ... or seeded random values), optional delay |
//! | `map` | in `in`, out `out` | `x * mul + add`, optional delay |
//! | `sink` | in `in` | consumes (optionally slowly), logs `count`, `sum`, `mean` metrics |
//! | `fail` | in `in` (optional), out `out` | forwards `after` messages, then fails |
//! | `panic` | in `in` (optional), out `out` | forwards `after` messages, then panics |
//! | `publisher` | in `in`, resource `policy` (writes) | publishes every received value to the policy store |
//! | `gated_counter` | out `out`, resource `policy` (reads) | emits batch `k` only once policy version `>= k - max_staleness` exists |

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::context::StageContext;
use crate::error::StageError;
use crate::params::{ParamProblem, ParamSpec, ParamType, Params};
use crate::registry::{PortSpec, Registry, ResourceSpec, Stage, StageKind};

/// Port type name of the testkit's integer messages.
pub const INT: &str = "int";

/// One thing a testkit stage did.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEvent {
    /// Stage name.
    pub stage: String,
    /// `send`, `recv`, `publish` or `gate` (value = policy version used).
    pub what: &'static str,
    /// The message value (or version).
    pub value: i64,
    /// When.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct RecInner {
    events: Mutex<Vec<TraceEvent>>,
    live: AtomicI64,
    max_live: AtomicI64,
}

/// Shared record of what testkit stages did; clone it into the registry and keep a copy to inspect.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<RecInner>);

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, stage: &str, what: &'static str, value: i64) {
        let e = TraceEvent { stage: stage.to_string(), what, value, at: Instant::now() };
        self.0.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    fn created(&self) {
        let now = self.0.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max_live.fetch_max(now, Ordering::SeqCst);
    }

    fn consumed(&self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// Every event so far, in the order recorded.
    pub fn events(&self) -> Vec<TraceEvent> {
        self.0.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Events of one stage and kind.
    pub fn events_of(&self, stage: &str, what: &str) -> Vec<TraceEvent> {
        self.events().into_iter().filter(|e| e.stage == stage && e.what == what).collect()
    }

    /// Most items ever created by `counter`s and not yet consumed by `sink`s at the same time.
    pub fn max_in_flight(&self) -> i64 {
        self.0.max_live.load(Ordering::SeqCst)
    }
}

fn sleep_ms(ms: u64) {
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

fn non_negative(params: &Params, names: &[&str]) -> Vec<ParamProblem> {
    names
        .iter()
        .filter(|n| params.get::<i64>(n).is_ok_and(|v| v < 0))
        .map(|n| ParamProblem::new(*n, format!("`{n}` must be >= 0")).with_help("use 0 or a positive integer"))
        .collect()
}

/// `counter`: a source of integers.
#[derive(Debug, Clone, Default)]
pub struct CounterKind(pub Recorder);

struct Counter {
    rec: Recorder,
    count: u64,
    start: i64,
    delay_ms: u64,
    random: bool,
}

impl StageKind for CounterKind {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn doc(&self) -> &'static str {
        "Emits `count` integers on `out` (start, start+1, ..., or seeded random values in [0, 1000) with `random: true`), sleeping `delay_ms` before each. Logs `count` and `sum` at the end."
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("out", INT, "the integers")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("count", ParamType::Int, "10", "how many integers to emit")
                .at_most(1e9, "one message per integer; more would run for hours"),
            ParamSpec::optional("start", ParamType::Int, "0", "first value"),
            ParamSpec::optional("delay_ms", ParamType::Int, "0", "sleep before each message, in milliseconds"),
            ParamSpec::optional("random", ParamType::Bool, "false", "emit values from the stage's seeded RNG instead"),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        non_negative(params, &["count", "delay_ms"])
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(Counter {
            rec: self.0.clone(),
            count: params.get("count")?,
            start: params.get("start")?,
            delay_ms: params.get("delay_ms")?,
            random: params.get("random")?,
        }))
    }
}

impl Stage for Counter {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let mut rng = ctx.seeds().rng("values");
        let bar = ctx.progress("emit", Some(self.count));
        let mut sum = 0i64;
        for i in 0..self.count {
            sleep_ms(self.delay_ms);
            let v = if self.random { rng.random_range(0..1000) } else { self.start + i as i64 };
            self.rec.created();
            self.rec.push(ctx.name(), "send", v);
            ctx.send("out", v)?;
            sum += v;
            bar.inc(1);
        }
        ctx.log_metrics(0, [("count", self.count as f64), ("sum", sum as f64)])
    }
}

/// `map`: `x * mul + add`.
#[derive(Debug, Clone, Default)]
pub struct MapKind(pub Recorder);

struct Map {
    rec: Recorder,
    add: i64,
    mul: i64,
    delay_ms: u64,
}

impl StageKind for MapKind {
    fn name(&self) -> &'static str {
        "map"
    }
    fn doc(&self) -> &'static str {
        "Transforms each integer on `in` to `x * mul + add` on `out`, sleeping `delay_ms` per message. Several sources on `in` are merged."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("in", INT, "integers to transform")]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("out", INT, "transformed integers")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("add", ParamType::Int, "0", "added after multiplying"),
            ParamSpec::optional("mul", ParamType::Int, "1", "multiplier"),
            ParamSpec::optional("delay_ms", ParamType::Int, "0", "sleep per message, in milliseconds"),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        non_negative(params, &["delay_ms"])
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(Map {
            rec: self.0.clone(),
            add: params.get("add")?,
            mul: params.get("mul")?,
            delay_ms: params.get("delay_ms")?,
        }))
    }
}

impl Stage for Map {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        while let Some(x) = ctx.recv::<i64>("in")? {
            self.rec.push(ctx.name(), "recv", *x);
            sleep_ms(self.delay_ms);
            let y = x.wrapping_mul(self.mul).wrapping_add(self.add);
            self.rec.push(ctx.name(), "send", y);
            ctx.send("out", y)?;
        }
        Ok(())
    }
}

/// `sink`: consumes integers and logs summary metrics.
#[derive(Debug, Clone, Default)]
pub struct SinkKind(pub Recorder);

struct Sink {
    rec: Recorder,
    delay_ms: u64,
    expect: Option<u64>,
}

impl StageKind for SinkKind {
    fn name(&self) -> &'static str {
        "sink"
    }
    fn doc(&self) -> &'static str {
        "Consumes integers on `in`, sleeping `delay_ms` after each (a slow consumer), and logs `count`, `sum` and `mean` at the end. Fails if `expect` is set and a different number arrived."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("in", INT, "integers to consume")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("delay_ms", ParamType::Int, "0", "sleep after each message, in milliseconds"),
            ParamSpec::optional("expect", ParamType::Int, "~", "fail unless exactly this many messages arrive"),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        non_negative(params, &["delay_ms"])
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(Sink { rec: self.0.clone(), delay_ms: params.get("delay_ms")?, expect: params.get_opt("expect")? }))
    }
}

impl Stage for Sink {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let (mut n, mut sum) = (0u64, 0i64);
        while let Some(x) = ctx.recv::<i64>("in")? {
            self.rec.push(ctx.name(), "recv", *x);
            self.rec.consumed();
            n += 1;
            sum += *x;
            sleep_ms(self.delay_ms);
        }
        if let Some(e) = self.expect {
            if e != n {
                return Err(StageError::msg(format!("expected {e} messages, received {n}")));
            }
        }
        let mean = if n > 0 { sum as f64 / n as f64 } else { 0.0 };
        ctx.log_metrics(0, [("count", n as f64), ("sum", sum as f64), ("mean", mean)])
    }
}

/// `fail` and `panic`: forward `after` messages, then fail (or panic).
#[derive(Debug, Clone)]
pub struct FailKind {
    rec: Recorder,
    panics: bool,
}

impl FailKind {
    /// The `fail` kind.
    pub fn fail(rec: Recorder) -> Self {
        FailKind { rec, panics: false }
    }

    /// The `panic` kind.
    pub fn panic(rec: Recorder) -> Self {
        FailKind { rec, panics: true }
    }
}

struct Fail {
    rec: Recorder,
    panics: bool,
    after: u64,
    message: String,
}

impl StageKind for FailKind {
    fn name(&self) -> &'static str {
        if self.panics {
            "panic"
        } else {
            "fail"
        }
    }
    fn doc(&self) -> &'static str {
        if self.panics {
            "Forwards the first `after` messages from `in` to `out`, then panics (the runner reports it as this stage's failure). With `in` unwired it panics at once."
        } else {
            "Forwards the first `after` messages from `in` to `out`, then fails with `message`. With `in` unwired it fails at once."
        }
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::optional("in", INT, "messages to forward before failing")]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("out", INT, "the forwarded messages")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("after", ParamType::Int, "0", "messages forwarded before failing"),
            ParamSpec::optional("message", ParamType::Str, "injected failure", "the error message"),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        non_negative(params, &["after"])
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(Fail {
            rec: self.rec.clone(),
            panics: self.panics,
            after: params.get("after")?,
            message: params.get("message")?,
        }))
    }
}

impl Stage for Fail {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let mut seen = 0u64;
        while seen < self.after {
            let Some(x) = ctx.recv::<i64>("in")? else { break };
            self.rec.push(ctx.name(), "recv", *x);
            ctx.send_arc("out", x)?;
            seen += 1;
        }
        if self.panics {
            panic!("{} after {seen} messages", self.message);
        }
        Err(StageError::msg(format!("{} after {seen} messages", self.message)))
    }
}

/// `publisher`: publishes every received integer to the policy store (a stand-in for a learner).
#[derive(Debug, Clone, Default)]
pub struct PublisherKind(pub Recorder);

struct Publisher {
    rec: Recorder,
    delay_ms: u64,
}

impl StageKind for PublisherKind {
    fn name(&self) -> &'static str {
        "publisher"
    }
    fn doc(&self) -> &'static str {
        "Stand-in for a learner: for each integer on `in`, sleeps `delay_ms` and publishes it as a new version of the `policy` store."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("in", INT, "values to publish")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::optional("delay_ms", ParamType::Int, "0", "work per message before publishing")]
    }
    fn resources(&self) -> Vec<ResourceSpec> {
        vec![ResourceSpec::writes("policy", "policy_store", "where new versions are published")]
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(Publisher { rec: self.0.clone(), delay_ms: params.get("delay_ms")? }))
    }
}

impl Stage for Publisher {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let store = ctx.policy("policy")?;
        while let Some(x) = ctx.recv::<i64>("in")? {
            sleep_ms(self.delay_ms);
            let v = store.publish(x);
            self.rec.push(ctx.name(), "publish", v as i64);
            ctx.log_metrics(v, [("version", v as f64)])?;
        }
        Ok(())
    }
}

/// `gated_counter`: a source that respects the policy store's maximum staleness (a stand-in for a
/// sampler).
#[derive(Debug, Clone, Default)]
pub struct GatedCounterKind(pub Recorder);

struct GatedCounter {
    rec: Recorder,
    count: u64,
}

impl StageKind for GatedCounterKind {
    fn name(&self) -> &'static str {
        "gated_counter"
    }
    fn doc(&self) -> &'static str {
        "Stand-in for a sampler: emits batches 0..count on `out`, waiting before batch k for policy version >= k - max_staleness; records the version each batch used."
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("out", INT, "batch indices")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::optional("count", ParamType::Int, "5", "number of batches")]
    }
    fn resources(&self) -> Vec<ResourceSpec> {
        vec![ResourceSpec::reads("policy", "policy_store", "the policy whose versions gate generation")]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        non_negative(params, &["count"])
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(GatedCounter { rec: self.0.clone(), count: params.get("count")? }))
    }
}

impl Stage for GatedCounter {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let store = ctx.policy("policy")?;
        for k in 0..self.count {
            let snap = store.wait_for_batch(k)?;
            self.rec.push(ctx.name(), "gate", snap.version as i64);
            ctx.send("out", k as i64)?;
        }
        Ok(())
    }
}

/// Registers every testkit kind, all sharing `rec`.
pub fn register(registry: &mut Registry, rec: &Recorder) {
    registry
        .register(CounterKind(rec.clone()))
        .register(MapKind(rec.clone()))
        .register(SinkKind(rec.clone()))
        .register(FailKind::fail(rec.clone()))
        .register(FailKind::panic(rec.clone()))
        .register(PublisherKind(rec.clone()))
        .register(GatedCounterKind(rec.clone()));
}

/// A registry with only the testkit kinds, and the recorder they share.
pub fn registry() -> (Registry, Recorder) {
    let rec = Recorder::new();
    let mut r = Registry::new();
    register(&mut r, &rec);
    (r, rec)
}
