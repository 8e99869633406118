//! Model files from Python: `import_gguf`, as `keel model import`.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::{guard, ModelError};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(import_gguf, m)?)?;
    Ok(())
}

/// Converts a GGUF file into a Hugging Face model directory `out` (model.safetensors, config.json,
/// tokenizer.json, tokenizer_config.json with the chat template), which `keel.run` pipelines,
/// `keel chat` and transformers can load. Returns keel-model's import report as a dict
/// (architecture, n_tensors, n_parameters, source_dtypes, vocab_size, files, warnings, ...).
#[pyfunction]
fn import_gguf<'py>(py: Python<'py>, path: PathBuf, out: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    guard(|| {
        if !path.is_file() {
            return Err(ModelError::new_err(format!("{} is not a file", path.display())));
        }
        let report = py.detach(|| keel_model::import_gguf(&path, &out)).map_err(|e| ModelError::new_err(e.to_string()))?;
        let json = serde_json::to_string(&report).map_err(|e| ModelError::new_err(format!("serialising the import report: {e}")))?;
        py.import("json")?.call_method1("loads", (json,))
    })
}
