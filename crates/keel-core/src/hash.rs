use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{CoreError, Result};

/// Hex sha256 of a byte slice (config hashes in manifests).
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex sha256 of a file, streamed so large model files do not need to fit in memory. Anything
/// but a regular file (a FIFO, `/dev/zero`, a directory) is refused before it is opened
/// ([`CoreError::NotRegularFile`]): opening a FIFO would block, and a device never ends.
pub fn sha256_file(path: &Path) -> Result<String> {
    crate::regular_file_len(path)?;
    let mut file = std::fs::File::open(path).map_err(|e| CoreError::io("opening", path, e))?;
    // The path may have been replaced between the check and the open.
    let meta = file.metadata().map_err(|e| CoreError::io("reading", path, e))?;
    crate::regular::check_regular(path, &meta)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| CoreError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        // sha256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn file_matches_bytes() {
        let dir = std::env::temp_dir().join(format!("keel-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.bin");
        std::fs::write(&p, vec![7u8; 3_000_000]).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_bytes(&vec![7u8; 3_000_000]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO is refused at once instead of blocking until a writer appears.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("keel-hash-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
        assert!(made, "mkfifo {} failed", fifo.display());
        let e = sha256_file(&fifo).unwrap_err();
        assert!(matches!(e, CoreError::NotRegularFile { kind: "a FIFO (named pipe)", .. }), "{e}");
        let e = sha256_file(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, CoreError::NotRegularFile { kind: "a character device", .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
