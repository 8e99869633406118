//! Keel's datasets: loaders, pinned manifests with a verified cache, splits, de-duplication and
//! synthetic task worlds.
//!
//! Everything yields [`keel_core::Example`], so the rest of Keel never sees a file format.
//!
//! - [`Catalog::embedded`] lists the manifests shipped in `datasets/*.yaml` (AdvBench, JBB
//!   harmful/benign, XSTest, HarmBench, StrongREJECT, GSM8K train/test, MATH-500, Alpaca). Each
//!   pins canonical URLs, a sha256, licence, citation, row count, cache path and field mapping.
//! - [`Cache`] is the download directory (`KEEL_DATA_DIR`, default `~/.cache/keel/data`);
//!   [`fetch`] downloads and verifies, [`Manifest::load`] verifies again and parses.
//! - [`load_file`] reads your own CSV / JSONL / JSON with a [`FieldMapping`].
//! - [`split()`], [`shuffle`], [`subset`] are deterministic per seed; [`overlap`] and [`dedup`]
//!   find prompts shared between datasets after [`normalize`].
//! - [`synthetic`] generates reasoning tasks and a safety world that train on a CPU in minutes.
//! - [`jailbreak`] rewrites harmful prompts with StrongREJECT's named attacks (prefix injection,
//!   refusal suppression, role play, base64, style injection, distractors, ...).
//!
//! ```no_run
//! use keel_data::{Cache, Catalog};
//! let catalog = Catalog::embedded()?;
//! let cache = Cache::from_env()?;
//! let gsm8k = catalog.get("gsm8k-test")?.load(&cache)?;
//! println!("{} examples", gsm8k.examples.len());
//! # Ok::<(), keel_data::DataError>(())
//! ```

#![warn(missing_docs)]

mod cache;
mod dedup;
mod error;
mod file;
pub mod jailbreak;
mod loader;
mod manifest;
mod split;
pub mod synthetic;

pub use cache::{fetch, fetch_manifest, Cache, CacheStatus, Fetched, DATA_DIR_ENV};
pub use dedup::{dedup, exclude_overlapping, normalize, overlap, prompt_key, Overlap, OverlapReport};
pub use error::{DataError, Result};
pub use file::{read_dataset_file, regular_file_len, MAX_DATASET_FILE_BYTES};
pub use loader::{
    extract_after_last_hashes, extract_last_boxed, load_file, read_records, AnswerRule, Extract, FieldMapping, Format,
    Loaded, OnError, Record, RowFilter, SafetyRule,
};
pub use manifest::{Catalog, DataFile, Manifest};
pub use split::{shuffle, shuffled, split, split_n, subset, Split};
pub use synthetic::safety::{SafetyWorld, SafetyWorldConfig};
pub use synthetic::tasks::{
    extract_answer, generate_tasks, task_world, verify_task, ArithConfig, CountConfig, SortConfig, TaskDomain, TaskWorld,
    ANSWER_PREFIX, MAX_TASK_WORLD_EXAMPLES,
};
pub use synthetic::ReasoningFormat;
