//! Opening dataset files safely: regular files only, with a size cap.
//!
//! A dataset path comes from a user (a manifest, `KEEL_DATA_DIR`, a pipeline), and a FIFO,
//! a device such as `/dev/zero` or a directory there must be refused at once: opening a FIFO
//! blocks until a writer appears (and ignores Ctrl-C while it waits), and reading a device
//! never ends. The loaders also read a file whole, so a cap keeps a huge file from exhausting
//! memory before parsing starts.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// Largest dataset file the loaders read (1 GiB). Why: a file is held in memory as text, then
/// as parsed rows, then as examples (several times its size); the largest catalogued file
/// (GSM8K train, Alpaca) is a few tens of MB, so 1 GiB only stops mistakes.
pub const MAX_DATASET_FILE_BYTES: u64 = 1 << 30;

/// What a non-regular file is, for the error message (keel-core's one classification).
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    keel_core::non_regular_kind(meta).unwrap_or("not a regular file")
}

/// The size of `path` if it is a regular file (symbolic links followed), checked with `stat`
/// without opening it, so a FIFO cannot block; [`DataError::NotRegularFile`] otherwise.
pub fn regular_file_len(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io("reading", path, e))?;
    if !meta.is_file() {
        return Err(DataError::NotRegularFile { path: path.to_path_buf(), kind: kind_of(&meta) });
    }
    Ok(meta.len())
}

/// Reads a whole dataset file of at most `limit` bytes: refuses anything but a regular file
/// before opening it ([`regular_file_len`]), refuses a larger file before reading it, and stops
/// reading at `limit` should the file grow meanwhile ([`DataError::FileTooLarge`] either way).
pub fn read_dataset_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let too_large = |size: String| DataError::FileTooLarge { path: path.to_path_buf(), size, limit };
    let len = regular_file_len(path)?;
    if len > limit {
        return Err(too_large(len.to_string()));
    }
    let file = std::fs::File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    // The path may have been replaced between the check and the open.
    let meta = file.metadata().map_err(|e| DataError::io("reading", path, e))?;
    if !meta.is_file() {
        return Err(DataError::NotRegularFile { path: path.to_path_buf(), kind: kind_of(&meta) });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| DataError::io("reading", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(format!("more than {limit}")));
    }
    Ok(bytes)
}
