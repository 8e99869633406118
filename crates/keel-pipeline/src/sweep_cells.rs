//! Sweep cells: the grid of a `sweep:` block times its seeds, each cell an ordinary pipeline
//! validated before any runs.

use crate::diag::{Diagnostic, Diagnostics};
use crate::document::{set_path, split_path};
use crate::registry::Registry;
use crate::document::PipelineDoc;
use crate::validated::{CellInfo, Pipeline, SweepSpec};
use crate::validation::validate_document;
use crate::yaml::{value_text, yaml_to_json, Node};

/// One expanded, validated cell.
#[derive(Debug, Clone)]
pub struct SweepCell {
    /// Which cell.
    pub info: CellInfo,
    /// The pipeline with the cell's values and seed applied.
    pub pipeline: Pipeline,
}

fn short_path(path: &str) -> String {
    let p = path.strip_prefix("stages.").unwrap_or(path);
    p.replacen(".with.", ".", 1)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '-') { c } else { '-' })
        .collect()
}

/// Longest cell id kept as written; longer ids (long string values) are cut and suffixed with a
/// hash of the whole id, so that every cell directory name fits a file system's 255-byte limit.
const MAX_CELL_ID_LEN: usize = 120;

/// The grid points in expansion order (first key slowest), as value indices per grid key,
/// produced one at a time so that nothing is allocated for the whole grid.
fn grid_points(sizes: Vec<usize>) -> impl Iterator<Item = Vec<usize>> {
    let mut next = (!sizes.contains(&0)).then(|| vec![0; sizes.len()]);
    std::iter::from_fn(move || {
        let current = next.take()?;
        let mut q = current.clone();
        for i in (0..q.len()).rev() {
            q[i] += 1;
            if q[i] < sizes[i] {
                next = Some(q);
                break;
            }
            q[i] = 0;
        }
        Some(current)
    })
}

/// The directory name of a cell: its parameter point and seed, made a single path component of
/// `[A-Za-z0-9._=-]` (never `.` or `..`: it always contains `seed=`) and capped in length.
fn cell_id(group: &str, seed: u64) -> String {
    let id = if group.is_empty() { format!("seed={seed}") } else { format!("{group}_seed={seed}") };
    if id.len() <= MAX_CELL_ID_LEN {
        return id;
    }
    let hash = keel_core::sha256_bytes(id.as_bytes());
    let tail = format!("-{}_seed={seed}", &hash[..12]);
    let keep = MAX_CELL_ID_LEN.saturating_sub(tail.len());
    // `sanitize` leaves only ASCII, so any byte offset is a character boundary.
    format!("{}{tail}", &id[..keep.min(id.len())])
}

/// The document of one cell: the base document without its `sweep:` block, with the cell's grid
/// values and seed set like `--set` overrides.
fn cell_doc(p: &Pipeline, sweep: &SweepSpec, assignments: &[(String, &Node)], seed: u64) -> Result<PipelineDoc, Diagnostic> {
    let mut doc = p.doc.clone();
    doc.remove_sweep();
    for ((path, span, _), (_, node)) in sweep.grid.iter().zip(assignments) {
        let segs = split_path(path, span, false)?;
        set_path(doc.root_mut(), &segs, (*node).clone())?;
    }
    let root = p.doc.root();
    let seed_span = root.get("seed").map(|n| n.span.clone()).unwrap_or_else(|| root.span.clone());
    set_path(doc.root_mut(), &[("seed".to_string(), seed_span.clone())], Node::scalar(seed.to_string(), seed_span))?;
    Ok(doc)
}

/// Expands the sweep block into cells (grid product in file order, first key slowest, seeds
/// innermost), validating every cell so that no cell can fail validation after others started.
///
/// The number of cells is counted before anything is expanded; a sweep past its limit
/// (`sweep.max_cells`, default [`crate::DEFAULT_MAX_SWEEP_CELLS`]) is an error at the `sweep:` block.
pub fn expand_sweep(p: &Pipeline, registry: &Registry) -> Result<Vec<SweepCell>, Diagnostics> {
    let Some(sweep) = &p.sweep else {
        return Err(Diagnostic::new(p.doc.root().span.clone(), format!("pipeline `{}` has no `sweep:` block", p.name))
            .with_help("add `sweep: {grid: {\"stages.X.with.Y\": [a, b]}, seeds: [1, 2, 3]}`")
            .into());
    };
    if let Err(d) = sweep.check_size() {
        return Err(d.into());
    }
    let mut cells = Vec::new();
    let mut diags = Vec::new();
    let mut used_ids = std::collections::HashSet::new();
    let mut seen_problems = std::collections::HashSet::new();
    for pt in grid_points(sweep.grid.iter().map(|(_, _, vals)| vals.len()).collect()) {
        let assignments: Vec<(String, &Node)> =
            sweep.grid.iter().zip(&pt).map(|((path, _, vals), &i)| (path.clone(), &vals[i])).collect();
        let group_parts: Vec<String> = assignments
            .iter()
            .map(|(path, node)| format!("{}={}", short_path(path), value_text(&node.to_value())))
            .collect();
        let group = sanitize(&group_parts.join("_"));
        for &seed in &sweep.seeds {
            let index = cells.len() + diags.len();
            let mut id = cell_id(&group, seed);
            if !used_ids.insert(id.clone()) {
                id = format!("{id}-{index}");
                used_ids.insert(id.clone());
            }
            let doc = match cell_doc(p, sweep, &assignments, seed) {
                Ok(doc) => doc,
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            };
            match validate_document(&doc, registry) {
                Ok(mut pipeline) => {
                    let info = CellInfo {
                        index: cells.len(),
                        id,
                        group: group.clone(),
                        assignments: assignments.iter().map(|(k, n)| (k.clone(), yaml_to_json(&n.to_value()))).collect(),
                        seed,
                    };
                    pipeline.sweep = None;
                    pipeline.cell = Some(info.clone());
                    cells.push(SweepCell { info, pipeline });
                }
                Err(e) => {
                    for mut d in e.0 {
                        // Report each problem once, for the first cell that shows it.
                        if seen_problems.insert((d.span.clone(), d.message.clone())) {
                            d.message = format!("in sweep cell `{id}`: {}", d.message);
                            diags.push(d);
                        }
                    }
                }
            }
        }
    }
    if diags.is_empty() {
        Ok(cells)
    } else {
        Err(Diagnostics(diags).sorted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(short_path("stages.learn.with.beta"), "learn.beta");
        assert_eq!(sanitize("a b/c"), "a-b-c");
        assert_eq!(sanitize("../../x"), "..-..-x");
        let long = "x".repeat(400);
        let id = cell_id(&long, 3);
        assert_eq!(id.len(), MAX_CELL_ID_LEN);
        assert!(id.ends_with("_seed=3"), "{id}");
        assert_ne!(cell_id(&format!("{long}a"), 3), id, "the hash keeps distinct long ids apart");
        assert_eq!(cell_id("lr=0.1", 2), "lr=0.1_seed=2");
    }

    #[test]
    fn grid_points_in_order() {
        let pts: Vec<Vec<usize>> = grid_points(vec![2, 3]).collect();
        assert_eq!(pts, vec![vec![0, 0], vec![0, 1], vec![0, 2], vec![1, 0], vec![1, 1], vec![1, 2]]);
        assert_eq!(grid_points(vec![]).collect::<Vec<_>>(), vec![Vec::<usize>::new()]);
        assert_eq!(grid_points(vec![3, 0]).count(), 0);
    }
}
