//! Dataset manifests (`datasets/*.yaml`) and the catalog compiled into the binary.
//!
//! A manifest pins one public file: where to download it, its sha256, licence and citation, how
//! many rows it has, and how its fields map onto [`keel_core::Example`]. Pinning the hash is what
//! makes an experiment reproducible: a run records the hash, and a file that changed upstream or
//! was edited locally is refused instead of silently producing different numbers.

use std::fmt::Write as _;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::error::{DataError, Result};
use crate::loader::{load_file, FieldMapping, Format, Loaded, OnError};

/// The file a manifest pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// Path relative to the cache directory, `/`-separated (e.g. `advbench/harmful_behaviors.csv`).
    /// It mirrors the layout of the shared dataset folder so one directory serves both.
    pub path: String,
    /// Canonical download URLs, tried in order (pinned-commit URLs first where one is known).
    pub urls: Vec<String>,
    /// Lowercase hex sha256 of the file's bytes.
    pub sha256: String,
    /// Other hashes accepted as the same dataset (e.g. a documented mirror copy whose bytes differ
    /// from upstream). Each must be explained in the manifest's `notes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_accept: Vec<String>,
}

impl DataFile {
    /// True if `hash` is the pinned hash or one of the accepted alternatives.
    pub fn accepts(&self, hash: &str) -> bool {
        self.sha256.eq_ignore_ascii_case(hash) || self.also_accept.iter().any(|h| h.eq_ignore_ascii_case(hash))
    }

    /// The accepted hashes as text for error messages.
    pub fn expected_hashes(&self) -> String {
        std::iter::once(self.sha256.as_str())
            .chain(self.also_accept.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

/// One dataset: provenance, pinned file and field mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short name used on the command line and as the example id prefix (`gsm8k-test`).
    pub name: String,
    /// Human-readable title.
    pub title: String,
    /// What the dataset is and what Keel uses it for.
    pub description: String,
    /// Project page or repository.
    pub homepage: String,
    /// Licence of the data (SPDX id where one exists).
    pub license: String,
    /// How to cite it.
    pub citation: String,
    /// The pinned file.
    pub file: DataFile,
    /// Number of data rows in the file (header excluded), before filters.
    pub rows: usize,
    /// File format.
    pub format: Format,
    /// Bad-row policy; pinned benchmarks use `fail`.
    #[serde(default)]
    pub on_error: OnError,
    /// Field mapping onto `Example`.
    pub mapping: FieldMapping,
    /// Provenance caveats and usage notes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Parses a manifest from YAML (JSON is valid YAML, so `.json` manifests work too) and validates it.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let m: Manifest = serde_yaml::from_str(text)
            .map_err(|e| DataError::Manifest { name: origin.to_string(), message: e.to_string() })?;
        m.validate(origin)?;
        Ok(m)
    }

    /// Checks what serde cannot: a safe relative path, well-formed hashes and URLs, a prompt field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |message: String| Err(DataError::Manifest { name: origin.to_string(), message });
        if self.name.is_empty()
            || !self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return bad(format!("name `{}` must be non-empty lowercase letters, digits, `-` or `_`", self.name));
        }
        let p = Path::new(&self.file.path);
        if self.file.path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return bad(format!("file.path `{}` must be a relative path without `..`", self.file.path));
        }
        for h in std::iter::once(&self.file.sha256).chain(&self.file.also_accept) {
            if !is_hex64(h) {
                return bad(format!("sha256 `{h}` is not 64 lowercase hex digits"));
            }
        }
        if self.file.urls.is_empty() {
            return bad("file.urls is empty".into());
        }
        if let Some(u) = self.file.urls.iter().find(|u| !(u.starts_with("https://") || u.starts_with("http://"))) {
            return bad(format!("url `{u}` is not http(s)"));
        }
        if self.mapping.prompt.is_empty() {
            return bad("mapping.prompt lists no field".into());
        }
        Ok(())
    }

    /// A multi-line, human-readable description for `keel data show`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{} — {}", self.name, self.title);
        let _ = writeln!(s, "  {}", self.description);
        let _ = writeln!(s, "  homepage:  {}", self.homepage);
        let _ = writeln!(s, "  license:   {}", self.license);
        let _ = writeln!(s, "  citation:  {}", self.citation);
        let _ = writeln!(s, "  file:      {} ({}, {} rows)", self.file.path, self.format.as_str(), self.rows);
        let _ = writeln!(s, "  sha256:    {}", self.file.sha256);
        for h in &self.file.also_accept {
            let _ = writeln!(s, "  also ok:   {h}");
        }
        for u in &self.file.urls {
            let _ = writeln!(s, "  url:       {u}");
        }
        let m = &self.mapping;
        let _ = writeln!(s, "  prompt:    {}", m.prompt.join(" + "));
        if let Some(a) = &m.answer {
            let _ = writeln!(s, "  answer:    {} ({:?})", a.field, a.extract);
        }
        if let Some(t) = &m.target {
            let _ = writeln!(s, "  target:    {t}");
        }
        if let Some(c) = &m.category {
            let _ = writeln!(s, "  category:  {c}");
        }
        match &m.safety {
            Some(crate::loader::SafetyRule::Fixed(l)) => {
                let _ = writeln!(s, "  safety:    all {l:?}");
            }
            Some(crate::loader::SafetyRule::Column { column, values }) => {
                let v: Vec<String> = values.iter().map(|(k, l)| format!("{k}={l:?}")).collect();
                let _ = writeln!(s, "  safety:    column {column} ({})", v.join(", "));
            }
            None => {}
        }
        for f in &m.filters {
            if !f.drop.is_empty() {
                let _ = writeln!(s, "  filter:    drop rows with {} in [{}]", f.column, f.drop.join(", "));
            }
            if !f.keep.is_empty() {
                let _ = writeln!(s, "  filter:    keep rows with {} in [{}]", f.column, f.keep.join(", "));
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note:      {n}");
        }
        s
    }

    /// One line for `keel data list`.
    pub fn summary(&self) -> String {
        format!("{:<28} {:>6} rows  {:<14} {}", self.name, self.rows, self.license, self.title)
    }

    /// Loads the dataset from the cache after verifying its sha256.
    ///
    /// Fails with [`DataError::NotCached`] (naming the path and URLs) if the file is absent and
    /// [`DataError::HashMismatch`] if its bytes differ from the pinned hash.
    pub fn load(&self, cache: &Cache) -> Result<Loaded> {
        let path = cache.verify(self)?;
        self.load_path(&path)
    }

    /// Loads the dataset from an arbitrary path with this manifest's mapping, without hash
    /// verification (for fixtures and local variants of a pinned file).
    pub fn load_path(&self, path: &Path) -> Result<Loaded> {
        load_file(path, self.format, &self.mapping, self.on_error, &self.name)
    }
}

/// The manifests compiled into the binary, so `keel data list` works from any directory.
/// Largest manifest file [`Catalog::from_dir`] reads: manifests are a few KB of YAML.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

const EMBEDDED: &[(&str, &str)] = &[
    ("advbench.yaml", include_str!("../../../datasets/advbench.yaml")),
    ("jbb-harmful.yaml", include_str!("../../../datasets/jbb-harmful.yaml")),
    ("jbb-benign.yaml", include_str!("../../../datasets/jbb-benign.yaml")),
    ("xstest.yaml", include_str!("../../../datasets/xstest.yaml")),
    ("harmbench.yaml", include_str!("../../../datasets/harmbench.yaml")),
    ("strongreject.yaml", include_str!("../../../datasets/strongreject.yaml")),
    ("gsm8k-train.yaml", include_str!("../../../datasets/gsm8k-train.yaml")),
    ("gsm8k-test.yaml", include_str!("../../../datasets/gsm8k-test.yaml")),
    ("math500.yaml", include_str!("../../../datasets/math500.yaml")),
    ("alpaca-instructions.yaml", include_str!("../../../datasets/alpaca-instructions.yaml")),
    ("alpaca-5000.yaml", include_str!("../../../datasets/alpaca-5000.yaml")),
];

/// A set of manifests addressed by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    manifests: Vec<Manifest>,
}

impl Catalog {
    /// The manifests shipped with Keel (`datasets/*.yaml`, compiled in).
    pub fn embedded() -> Result<Catalog> {
        let manifests = EMBEDDED
            .iter()
            .map(|(file, text)| Manifest::from_yaml(text, file))
            .collect::<Result<Vec<_>>>()?;
        Catalog::from_manifests(manifests)
    }

    /// A catalog of your own manifests: every `*.yaml`, `*.yml` and `*.json` file in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Catalog> {
        let entries = std::fs::read_dir(dir).map_err(|e| DataError::io("reading manifest directory", dir, e))?;
        let mut manifests = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| DataError::io("reading manifest directory", dir, e))?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "yaml" | "yml" | "json") && path.is_file() {
                let bytes = crate::file::read_dataset_file(&path, MAX_MANIFEST_BYTES)?;
                let text = String::from_utf8(bytes).map_err(|_| DataError::Manifest {
                    name: path.display().to_string(),
                    message: "not valid UTF-8".into(),
                })?;
                manifests.push(Manifest::from_yaml(&text, &path.display().to_string())?);
            }
        }
        Catalog::from_manifests(manifests)
    }

    /// Builds a catalog, rejecting duplicate names; manifests are kept sorted by name.
    pub fn from_manifests(mut manifests: Vec<Manifest>) -> Result<Catalog> {
        manifests.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = manifests.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(DataError::Manifest { name: w[0].name.clone(), message: "defined twice".into() });
        }
        Ok(Catalog { manifests })
    }

    /// The manifest called `name`, or an error listing the known names.
    pub fn get(&self, name: &str) -> Result<&Manifest> {
        self.manifests.iter().find(|m| m.name == name).ok_or_else(|| DataError::UnknownDataset {
            name: name.to_string(),
            known: self.names().join(", "),
        })
    }

    /// All dataset names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.manifests.iter().map(|m| m.name.as_str()).collect()
    }

    /// All manifests, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Manifest> {
        self.manifests.iter()
    }

    /// Number of manifests.
    pub fn len(&self) -> usize {
        self.manifests.len()
    }

    /// True if the catalog has no manifest.
    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty()
    }

    /// Loads the dataset `name` from `cache`, verifying its hash.
    pub fn load(&self, name: &str, cache: &Cache) -> Result<Loaded> {
        self.get(name)?.load(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_parses_and_is_complete() {
        let c = Catalog::embedded().unwrap();
        assert_eq!(
            c.names(),
            vec![
                "advbench",
                "alpaca-5000",
                "alpaca-instructions",
                "gsm8k-test",
                "gsm8k-train",
                "harmbench",
                "jbb-benign",
                "jbb-harmful",
                "math500",
                "strongreject",
                "xstest"
            ]
        );
        let hb = c.get("harmbench").unwrap();
        assert_eq!(hb.rows, 400);
        assert_eq!(hb.file.sha256, "8d81accedd38eaaf8b760618622bb888417d1fd0c86eba65c427a16f1cbb4afc");
        assert!(hb.describe().contains("drop rows with FunctionalCategory in [copyright]"));
        assert_eq!(c.get("strongreject").unwrap().rows, 313);
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let c = Catalog::embedded().unwrap();
        let err = c.get("advbnch").unwrap_err().to_string();
        assert!(err.contains("unknown dataset `advbnch`") && err.contains("gsm8k-test"), "{err}");
    }

    #[test]
    fn validation_rejects_escaping_paths_and_bad_hashes() {
        let text = include_str!("../../../datasets/advbench.yaml");
        let mut m = Manifest::from_yaml(text, "advbench.yaml").unwrap();
        m.file.path = "../etc/passwd".into();
        assert!(m.validate("x").unwrap_err().to_string().contains("relative path"));
        let mut m = Manifest::from_yaml(text, "advbench.yaml").unwrap();
        m.file.sha256 = "abc".into();
        assert!(m.validate("x").unwrap_err().to_string().contains("64 lowercase hex"));
        let err = Manifest::from_yaml("name: x\nbogus: 1\n", "m.yaml").unwrap_err().to_string();
        assert!(err.starts_with("manifest m.yaml:"), "{err}");
    }
}
