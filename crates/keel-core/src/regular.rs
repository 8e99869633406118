//! Regular files only: the one check every reader of a user-given path shares (dataset loaders,
//! the pipeline loader, input-file hashing).
//!
//! Why: a path comes from a user (a pipeline, a manifest, an environment variable), and opening
//! a FIFO blocks until a writer appears (ignoring Ctrl-C while it waits), while reading a device
//! such as `/dev/zero` never ends. `stat` tells what a path is without opening it.

use std::fs::Metadata;
use std::path::Path;

use crate::{CoreError, Result};

/// What a path that is not a regular file is, for error messages ("a FIFO (named pipe)", "a
/// directory", ...); `None` for a regular file.
pub fn non_regular_kind(meta: &Metadata) -> Option<&'static str> {
    let ft = meta.file_type();
    if ft.is_file() {
        return None;
    }
    if ft.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if ft.is_char_device() {
            return Some("a character device");
        }
        if ft.is_block_device() {
            return Some("a block device");
        }
        if ft.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// The size of `path` if it is a regular file (symbolic links followed), checked with `stat`
/// without opening it, so a FIFO cannot block; [`CoreError::NotRegularFile`] otherwise.
pub fn regular_file_len(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| CoreError::io("reading", path, e))?;
    check_regular(path, &meta)?;
    Ok(meta.len())
}

/// [`CoreError::NotRegularFile`] unless `meta` (of `path`) is a regular file's.
pub(crate) fn check_regular(path: &Path, meta: &Metadata) -> Result<()> {
    match non_regular_kind(meta) {
        None => Ok(()),
        Some(kind) => Err(CoreError::NotRegularFile { path: path.to_path_buf(), kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_pass_and_directories_and_devices_are_named() {
        let dir = std::env::temp_dir().join(format!("keel-regular-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.txt");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(regular_file_len(&f).unwrap(), 5);
        let e = regular_file_len(&dir).unwrap_err();
        assert!(matches!(e, CoreError::NotRegularFile { kind: "a directory", .. }), "{e}");
        #[cfg(unix)]
        {
            let e = regular_file_len(Path::new("/dev/null")).unwrap_err();
            assert_eq!(e.to_string(), "/dev/null is a character device, not a regular file; pass a regular file");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
