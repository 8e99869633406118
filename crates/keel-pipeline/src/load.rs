//! Loading: read or parse a pipeline, apply `--set` overrides, validate it and every cell of its
//! sweep, reporting all problems together.

use std::path::Path;

use crate::diag::Diagnostics;
use crate::document::PipelineDoc;
use crate::registry::Registry;
use crate::sweep_cells::expand_sweep;
use crate::validated::Pipeline;
use crate::validation::validate_document;

/// Validates a document against a registry, collecting every problem; a pipeline with a `sweep:`
/// block has every cell expanded and validated too, so that no cell fails after others have run.
pub fn validate(doc: &PipelineDoc, registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let pipeline = validate_document(doc, registry)?;
    if pipeline.sweep.is_some() {
        expand_sweep(&pipeline, registry)?;
    }
    Ok(pipeline)
}


/// Reads a pipeline file, applies overrides and validates, reporting all problems together.
pub fn load(path: &Path, overrides: &[String], registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let doc = PipelineDoc::read(path)?;
    finish_load(doc, overrides, registry)
}

/// Like [`load`] for text already in memory; `file` names it in diagnostics.
pub fn load_str(file: &str, text: &str, overrides: &[String], registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let doc = PipelineDoc::parse(file, text)?;
    finish_load(doc, overrides, registry)
}

fn finish_load(mut doc: PipelineDoc, overrides: &[String], registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let mut diags = Vec::new();
    for o in overrides {
        if let Err(d) = doc.apply_override(o) {
            diags.push(d);
        }
    }
    match validate(&doc, registry) {
        Ok(p) if diags.is_empty() => Ok(p),
        Ok(_) => Err(Diagnostics(diags)),
        Err(e) => {
            diags.extend(e.0);
            Err(Diagnostics(diags).sorted())
        }
    }
}
