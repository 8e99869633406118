//! The local dataset cache and verified downloads.
//!
//! Datasets are never vendored into the repository: a manifest names canonical URLs and a
//! sha256, [`fetch`] downloads into the cache directory, and every load re-checks the hash. The
//! cache directory is `KEEL_DATA_DIR` if set (CI and the shared machine point it at a folder of
//! pre-downloaded files), else `<user cache dir>/keel/data` (`~/.cache/keel/data` on Linux).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{DataError, Result};
use crate::manifest::{Catalog, DataFile, Manifest};

/// Environment variable naming the cache directory.
pub const DATA_DIR_ENV: &str = "KEEL_DATA_DIR";

/// Largest download accepted, so a wrong URL serving something huge cannot fill the disk.
const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// A directory holding dataset files at the relative paths their manifests name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

/// What is in the cache for one manifest (for `keel data list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// The file is absent.
    Missing,
    /// The file is present and its hash is accepted.
    Verified,
    /// The file is present but its hash is wrong; `actual` is what it hashes to.
    Mismatch {
        /// The hash of the bytes present.
        actual: String,
    },
}

/// The result of a [`fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Where the verified file now lies.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// The URL it was downloaded from, or `None` if a verified copy was already cached.
    pub url: Option<String>,
    /// Its size in bytes.
    pub bytes: u64,
}

impl Cache {
    /// A cache rooted at `root` (created on first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    /// `KEEL_DATA_DIR` if set and non-empty, else `<user cache dir>/keel/data`.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(DATA_DIR_ENV) {
            Some(v) if !v.is_empty() => Ok(Cache::new(v)),
            _ => dirs::cache_dir().map(|d| Cache::new(d.join("keel").join("data"))).ok_or(DataError::NoCacheDir),
        }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the file of `manifest` lives (or must be put) in this cache.
    pub fn path_for(&self, manifest: &Manifest) -> PathBuf {
        self.path_of(&manifest.file)
    }

    fn path_of(&self, file: &DataFile) -> PathBuf {
        file.path.split('/').fold(self.root.clone(), |p, part| p.join(part))
    }

    /// Whether the file is present and intact, without failing on either; a path that is not a
    /// regular file (a FIFO, a device) is an error rather than a status, so it is never hashed.
    pub fn status(&self, manifest: &Manifest) -> Result<CacheStatus> {
        let path = self.path_for(manifest);
        if !path.exists() {
            return Ok(CacheStatus::Missing);
        }
        crate::file::regular_file_len(&path)?;
        let actual = keel_core::sha256_file(&path)?;
        Ok(if manifest.file.accepts(&actual) { CacheStatus::Verified } else { CacheStatus::Mismatch { actual } })
    }

    /// Returns the cached path after checking that the file exists, is a regular file
    /// ([`DataError::NotRegularFile`] for a FIFO, device or directory) and has an accepted sha256.
    pub fn verify(&self, manifest: &Manifest) -> Result<PathBuf> {
        let path = self.path_for(manifest);
        if !path.exists() {
            return Err(DataError::NotCached {
                dataset: manifest.name.clone(),
                path,
                urls: manifest.file.urls.join(" "),
            });
        }
        // A FIFO or device in the cache is refused before hashing would block on it.
        crate::file::regular_file_len(&path)?;
        let actual = keel_core::sha256_file(&path)?;
        if !manifest.file.accepts(&actual) {
            return Err(DataError::HashMismatch {
                path: path.display().to_string(),
                dataset: manifest.name.clone(),
                expected: manifest.file.expected_hashes(),
                actual,
            });
        }
        Ok(path)
    }
}

/// Downloads the embedded catalog's dataset `name` into `cache` (see [`fetch_manifest`]).
pub fn fetch(name: &str, cache: &Cache) -> Result<Fetched> {
    let catalog = Catalog::embedded()?;
    fetch_manifest(catalog.get(name)?, cache)
}

fn download(agent: &ureq::Agent, url: &str) -> std::result::Result<Vec<u8>, String> {
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => format!("HTTP {code}"),
        other => other.to_string(),
    })?;
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_DOWNLOAD_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading body: {e}"))?;
    if body.len() as u64 > MAX_DOWNLOAD_BYTES {
        return Err(format!("larger than {MAX_DOWNLOAD_BYTES} bytes"));
    }
    Ok(body)
}

/// Makes sure the manifest's file is in the cache with an accepted sha256.
///
/// A verified cached copy is kept as is. Otherwise each URL is tried in order; the body is hashed
/// in memory and written (atomically, via a temporary file and rename) only if the hash is
/// accepted, so the cache never holds a partial or unverified file. A copy with a wrong hash is
/// replaced. If a URL serves bytes with the wrong hash, the error is [`DataError::HashMismatch`]
/// naming the URL (unless a later URL serves the right bytes); if every URL fails to respond,
/// [`DataError::Download`] names each URL and the exact path where a manual download must go.
pub fn fetch_manifest(manifest: &Manifest, cache: &Cache) -> Result<Fetched> {
    let path = cache.path_for(manifest);
    if let CacheStatus::Verified = cache.status(manifest)? {
        let bytes = std::fs::metadata(&path).map_err(|e| DataError::io("reading metadata of", &path, e))?.len();
        let sha256 = keel_core::sha256_file(&path)?;
        return Ok(Fetched { path, sha256, url: None, bytes });
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(120))
        .build();
    let mut attempts = Vec::new();
    let mut mismatch = None;
    for url in &manifest.file.urls {
        tracing::info!(dataset = %manifest.name, %url, "downloading");
        match download(&agent, url) {
            Ok(body) => {
                let actual = keel_core::sha256_bytes(&body);
                if manifest.file.accepts(&actual) {
                    keel_core::write_atomic(&path, &body)?;
                    return Ok(Fetched { path, sha256: actual, url: Some(url.clone()), bytes: body.len() as u64 });
                }
                attempts.push(format!("{url}: sha256 {actual} is not the pinned one"));
                mismatch.get_or_insert(DataError::HashMismatch {
                    path: format!("{url} (downloaded for {})", path.display()),
                    dataset: manifest.name.clone(),
                    expected: manifest.file.expected_hashes(),
                    actual,
                });
            }
            Err(reason) => attempts.push(format!("{url}: {reason}")),
        }
    }
    if let Some(e) = mismatch {
        return Err(e);
    }
    Err(DataError::Download {
        dataset: manifest.name.clone(),
        attempts: attempts.join("; "),
        urls: manifest.file.urls.join(" "),
        path,
    })
}
