//! Every stage kind Keel ships, and the registry that lists them.

mod data;
mod evaluate;
mod jailbreak;
mod model;
mod rl;
mod sft;

use keel_pipeline::{Registry, StageContext, StageError};

use crate::messages::ExampleSet;

/// A registry with every Keel stage kind: what `keel run`, `keel validate` and `keel list` use.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(data::SyntheticWorld)
        .register(data::Dataset)
        .register(data::TrainTokenizer)
        .register(jailbreak::Jailbreak)
        .register(model::Model)
        .register(model::TinyModel)
        .register(sft::Sft)
        .register(rl::Prompts)
        .register(rl::Rollout)
        .register(rl::Score)
        .register(rl::Learn)
        .register(evaluate::Evaluate)
        .register(evaluate::Report);
    r
}

/// Receives exactly one message on a required port, with a clear error if the upstream stage
/// finished without sending one.
pub(crate) fn recv_one<T: std::any::Any + Send + Sync>(
    ctx: &StageContext,
    port: &str,
) -> Result<std::sync::Arc<T>, StageError> {
    ctx.recv::<T>(port)?.ok_or_else(|| {
        StageError::msg(format!("input `{port}` closed before any message arrived (did the upstream stage fail?)"))
    })
}

/// Receives every example set on a (possibly fan-in) port and concatenates them in arrival order.
pub(crate) fn recv_examples(ctx: &StageContext, port: &str) -> Result<Option<std::sync::Arc<ExampleSet>>, StageError> {
    recv_examples_ordered(ctx, port, false)
}

/// Like [`recv_examples`], but concatenates the sets in order of their names, so that a fan-in of
/// several producers (e.g. five safety benchmarks into an evaluation) gives the same merged set
/// whichever producer finishes first.
pub(crate) fn recv_examples_sorted(ctx: &StageContext, port: &str) -> Result<Option<std::sync::Arc<ExampleSet>>, StageError> {
    recv_examples_ordered(ctx, port, true)
}

fn recv_examples_ordered(
    ctx: &StageContext,
    port: &str,
    sort: bool,
) -> Result<Option<std::sync::Arc<ExampleSet>>, StageError> {
    if !ctx.is_wired(port) {
        return Ok(None);
    }
    let mut sets = Vec::new();
    while let Some(s) = ctx.recv::<ExampleSet>(port)? {
        sets.push(s);
    }
    if sort {
        sets.sort_by(|a, b| a.name.cmp(&b.name));
    }
    match sets.len() {
        0 => Err(StageError::msg(format!("input `{port}` closed before any example set arrived"))),
        1 => Ok(sets.pop()),
        _ => {
            let name = sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join("+");
            let examples = sets.iter().flat_map(|s| s.examples.iter().cloned()).collect();
            Ok(Some(std::sync::Arc::new(ExampleSet { name, examples })))
        }
    }
}
