use std::path::PathBuf;

/// Errors from the shared vocabulary: file system work on run directories and hashing.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// An I/O operation failed on a specific path; the path tells the user which file to check.
    #[error("{action} {path}: {source}")]
    Io {
        /// What Keel was doing ("creating run directory", "writing", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A path that must be a regular file is a FIFO, device, socket or directory; refused
    /// before it is opened, because a FIFO blocks the reader and a device never ends.
    #[error("{path} is {kind}, not a regular file; pass a regular file")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead ("a FIFO (named pipe)", "a directory", ...).
        kind: &'static str,
    },
    /// A value could not be serialised to JSON (a bug or a non-finite float in a record).
    #[error("serialising {what}: {source}")]
    Json {
        /// Which record was being written.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

impl CoreError {
    /// Wraps an I/O error with the action and path, so messages always name the file.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io { action, path: path.into(), source }
    }
}

/// Result alias for keel-core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
