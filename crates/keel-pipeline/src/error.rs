//! Error types of the engine.

use std::path::PathBuf;

/// A boxed error from a stage's own code (a model, a dataset loader, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a stage failed (or stopped).
///
/// Stages return this from `run`; the runner reports the first one with the stage's name, cancels
/// the rest of the pipeline and records it in `status.json`.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The pipeline was cancelled (another stage failed, or the user pressed Ctrl-C). Stages
    /// return this from blocked `recv`/`send`/`wait_for`; it is never reported as the failure.
    #[error("cancelled")]
    Cancelled,
    /// A failure with a message and, where there is one, the underlying error.
    #[error("{message}")]
    Failed {
        /// What went wrong, in words that make sense without the source.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl StageError {
    /// A failure described by a message.
    pub fn msg(message: impl Into<String>) -> Self {
        StageError::Failed { message: message.into(), source: None }
    }

    /// A failure with context wrapping an underlying error.
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StageError::Failed { message: message.into(), source: Some(source.into()) }
    }

    /// True for [`StageError::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, StageError::Cancelled)
    }

    /// The message followed by the chain of sources, `: `-separated, for logs and status files.
    pub fn full_message(&self) -> String {
        let mut s = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

impl From<keel_core::CoreError> for StageError {
    fn from(e: keel_core::CoreError) -> Self {
        StageError::with_source("run directory I/O failed", e)
    }
}

/// Why a run (or a sweep) did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A stage failed; the whole pipeline was stopped.
    #[error("stage `{stage}` failed: {message} (run directory: {})", run_dir.display())]
    StageFailed {
        /// The stage that failed first.
        stage: String,
        /// Its error, with sources.
        message: String,
        /// Where the run's files are.
        run_dir: PathBuf,
    },
    /// The run was cancelled from outside (Ctrl-C).
    #[error("run cancelled (run directory: {})", run_dir.display())]
    Cancelled {
        /// Where the run's files are.
        run_dir: PathBuf,
    },
    /// Setting up the run directory or manifest failed.
    #[error("setting up the run: {0}")]
    Core(#[from] keel_core::CoreError),
    /// A file a stage declared as input could not be hashed for the manifest.
    #[error("hashing input file {} of stage `{stage}`: {source}", path.display())]
    InputFile {
        /// The stage that declared it.
        stage: String,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: keel_core::CoreError,
    },
    /// The pipeline (or a sweep cell) did not validate.
    #[error("{0}")]
    Invalid(#[from] crate::diag::Diagnostics),
    /// Some cells of a sweep failed; the others ran and the summary was written.
    #[error("{failed} of {total} sweep cells failed: {}", cells.join(", "))]
    SweepFailed {
        /// Number of failed cells.
        failed: usize,
        /// Number of cells.
        total: usize,
        /// Ids of the failed cells.
        cells: Vec<String>,
    },
    /// A run id that is not a single safe path component (see [`crate::check_run_id`]).
    #[error(
        "invalid run id `{id}`: {reason}; a run id names one directory under --runs-dir: use 1-128 \
         letters, digits, `.`, `_`, `=` and `-`, not starting with `.`"
    )]
    InvalidRunId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Anything else (e.g. writing the Slurm script).
    #[error("{0}")]
    Other(String),
}

impl RunError {
    /// The process exit code the CLI should use: 1 for failures, 130 for cancellation (as after
    /// SIGINT), 2 for invalid pipelines.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Cancelled { .. } => 130,
            RunError::Invalid(_) | RunError::InvalidRunId { .. } => 2,
            _ => 1,
        }
    }
}
