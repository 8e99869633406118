use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`: the values a stage logged at a step.
///
/// Keeping values in a sorted map makes files diff-able and bit-identical across reruns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Name of the stage that logged the values.
    pub stage: String,
    /// The stage's step counter (optimiser step, evaluation round, ...).
    pub step: u64,
    /// Metric name to value.
    pub values: BTreeMap<String, f64>,
}

impl MetricRecord {
    /// An empty record for a stage at a step.
    pub fn new(stage: impl Into<String>, step: u64) -> Self {
        MetricRecord { stage: stage.into(), step, values: BTreeMap::new() }
    }

    /// Adds a value (builder style).
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Self {
        self.values.insert(name.into(), value);
        self
    }
}
