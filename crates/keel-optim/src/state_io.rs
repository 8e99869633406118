//! Atomic save/load of named tensors (safetensors) and JSON metadata, shared by AdamW and EMA.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{OptimError, Result};

/// Writes `tensors` to `path` as safetensors, atomically: a temporary sibling is written and then
/// renamed over the target, so an interrupted save never leaves a truncated checkpoint.
pub(crate) fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| keel_core::CoreError::io("creating directory", parent, e))?;
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| OptimError::state(&tmp, format!("writing safetensors: {e}")))?;
    fs::rename(&tmp, path).map_err(|e| keel_core::CoreError::io("renaming into place", path, e))?;
    Ok(())
}

/// Reads all tensors of a safetensors file onto `device`.
pub(crate) fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .map_err(|e| OptimError::state(path, format!("reading safetensors: {e}")))
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub(crate) fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| OptimError::state(path, format!("serialising JSON: {e}")))?;
    keel_core::write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads JSON from `path` into `T`.
pub(crate) fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| keel_core::CoreError::io("reading", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| OptimError::state(path, format!("parsing JSON: {e}")))
}
