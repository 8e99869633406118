//! `keel._keel`: the native half of the `keel` Python package.
//!
//! Safety researchers work in Python notebooks and already train with TRL; this module lends them
//! Keel's pipeline runner, its math verifier and its safety judges without a subprocess or a JSON
//! round trip. It is deliberately thin, like the CLI: every function converts Python values, calls
//! the library crates and converts the result back, so that Python and the `keel` binary can never
//! disagree about what a run, a reward or a verdict is. The pure-Python package (`python/keel`)
//! adds the conveniences that are easier in Python: data frames, TRL's calling convention, types.
//!
//! Rules at the boundary (see docs/python.md):
//! * every Rust error becomes an exception of the [`errors`] hierarchy (`keel.KeelError` and its
//!   subclasses) carrying the same message the CLI prints;
//! * no panic crosses into Python: every entry point runs under [`errors::guard`], which turns a
//!   panic into a `KeelError` naming it as a bug;
//! * long work runs with the GIL released (pipelines on a worker thread, so that Ctrl-C in the
//!   interpreter still cancels the run, see [`pipeline`]).

use pyo3::prelude::*;

pub mod errors;
mod judges;
mod model;
mod pipeline;
mod progress;
mod rewards;

/// The allocator the `keel` CLI ships with, so that a run started from Python takes the time
/// and memory it takes from the command line (training re-allocates the same large buffers every
/// step; docs/performance.md). It serves only allocations made by Rust code in this module.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Module initialisation: the CLI's process-wide settings that do not touch the environment
/// (the Python package sets `CANDLE_NUM_THREADS` itself, before importing this module, because
/// setting environment variables from a library while other threads may exist is not safe), and
/// `KEEL_LOG`-filtered tracing on standard error, as in the CLI.
#[pymodule]
fn _keel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    keel_model::ops::keep_freed_memory();
    // A second initialisation (another extension already installed a subscriber) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    m.add("__version__", keel_core::KEEL_VERSION)?;
    errors::register(m)?;
    pipeline::register(m)?;
    rewards::register(m)?;
    judges::register(m)?;
    model::register(m)?;
    Ok(())
}
