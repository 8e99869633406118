use std::path::PathBuf;

/// Everything that can go wrong while finding, fetching, verifying or parsing a dataset.
///
/// Every variant names the file (and line, URL or hash) involved, because the person reading the
/// message usually has to act on a specific file: re-download it, fix a row, or edit a manifest.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O operation failed on a specific path.
    #[error("{action} {path}: {source}")]
    Io {
        /// What Keel was doing ("reading", "creating cache directory", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A dataset path names a FIFO, a device, a directory or a socket: refused before it is
    /// opened, because a FIFO blocks the reader and a device never ends.
    #[error("{path} is {kind}, not a regular file; a dataset must be a regular file")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead ("a FIFO (named pipe)", "a directory", ...).
        kind: &'static str,
    },
    /// A dataset file is larger than the loaders read whole.
    #[error(
        "{path} is {size} bytes, more than the {limit}-byte limit for one dataset file (the loaders \
         read a file whole); split it into smaller files"
    )]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes (or "more than LIMIT" when it grew while being read).
        size: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// A row (or the structure around it) could not be parsed or mapped.
    ///
    /// `line` is 1-based and points at the line where the offending record starts.
    #[error("{path}:{line}: {message}")]
    Row {
        /// The data file.
        path: PathBuf,
        /// 1-based line where the record starts.
        line: u64,
        /// What is wrong with it.
        message: String,
    },
    /// A manifest could not be parsed or is inconsistent.
    #[error("manifest {name}: {message}")]
    Manifest {
        /// Manifest file or dataset name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A dataset name is not in the catalog.
    #[error("unknown dataset `{name}`; known datasets: {known}")]
    UnknownDataset {
        /// The requested name.
        name: String,
        /// Comma-separated list of valid names.
        known: String,
    },
    /// A file's content does not match its pinned sha256 (tampered, truncated or a different version).
    #[error(
        "sha256 mismatch for {path}: expected {expected}, got {actual}; the file is corrupt, truncated \
         or a different version; delete it and run `keel data fetch {dataset}`"
    )]
    HashMismatch {
        /// The file (or URL) whose content was hashed.
        path: String,
        /// Dataset name, for the suggested fix.
        dataset: String,
        /// The pinned hash(es) from the manifest.
        expected: String,
        /// The hash of the bytes actually present.
        actual: String,
    },
    /// A dataset file is not in the cache.
    #[error(
        "dataset `{dataset}` is not in the cache: {path} does not exist; run `keel data fetch {dataset}` \
         or download {urls} and save it at exactly that path (set KEEL_DATA_DIR to use another cache directory)"
    )]
    NotCached {
        /// Dataset name.
        dataset: String,
        /// Where the file is expected.
        path: PathBuf,
        /// Canonical URLs, space-separated.
        urls: String,
    },
    /// Every download URL failed.
    #[error(
        "could not download dataset `{dataset}`: {attempts}; if this machine is offline, download the file \
         manually from {urls} and save it at {path}"
    )]
    Download {
        /// Dataset name.
        dataset: String,
        /// `URL: reason` for each URL tried, separated by `; `.
        attempts: String,
        /// The URLs, space-separated.
        urls: String,
        /// The exact path where a manually downloaded copy must be put.
        path: PathBuf,
    },
    /// A parameter of a split, subset or synthetic world is out of range.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The parameter.
        what: &'static str,
        /// Why it is invalid.
        message: String,
    },
    /// No cache directory could be determined.
    #[error("no cache directory: KEEL_DATA_DIR is unset and the user cache directory is unknown; set KEEL_DATA_DIR")]
    NoCacheDir,
}

impl DataError {
    /// Wraps an I/O error with the action and path, so messages always name the file.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { action, path: path.into(), source }
    }

    /// A row-level error at `path:line`.
    pub fn row(path: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Self {
        DataError::Row { path: path.into(), line, message: message.into() }
    }
}

impl From<keel_core::CoreError> for DataError {
    fn from(e: keel_core::CoreError) -> Self {
        match e {
            keel_core::CoreError::Io { action, path, source } => DataError::Io { action, path, source },
            keel_core::CoreError::NotRegularFile { path, kind } => DataError::NotRegularFile { path, kind },
            other => DataError::Manifest { name: "core".into(), message: other.to_string() },
        }
    }
}

/// Result alias for keel-data.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
