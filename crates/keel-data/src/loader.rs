//! Readers for CSV, JSON Lines and JSON arrays, and the field mapping that turns their rows into
//! [`keel_core::Example`]s.
//!
//! Reading and mapping are separate steps so that every format shares one mapping language (the
//! `mapping:` block of a manifest) and one error policy (`on_error`). Column and key names are
//! matched case-insensitively because copies of the same benchmark differ in header case (the JBB
//! benign file has `goal`, the Hugging Face original `Goal`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_core::{Example, SafetyLabel};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// The on-disk layout of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 4180 CSV with a header row: quoted multi-line fields, CRLF or LF, optional UTF-8 BOM.
    Csv,
    /// One JSON object per line (blank lines are ignored).
    Jsonl,
    /// One JSON array of objects.
    Json,
}

impl Format {
    /// The lowercase name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Json => "json",
        }
    }
}

/// What to do with a row that cannot be parsed or mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop at the first bad row (the default: pinned benchmarks must load completely).
    #[default]
    Fail,
    /// Skip bad rows, count them in [`Loaded::skipped`] and log a warning (for messy user data).
    Skip,
}

/// How to turn a raw field into the verifiable `answer` of an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extract {
    /// The trimmed field as is.
    #[default]
    Whole,
    /// GSM8K convention: the text after the last `####`, trimmed, with thousands commas removed.
    AfterLastHashes,
    /// MATH convention: the content of the last `\boxed{...}` (braces balanced).
    LastBoxed,
}

/// Where the verifiable answer comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRule {
    /// Field (column or key) holding the answer or the solution that contains it.
    pub field: String,
    /// How to extract the answer from that field.
    #[serde(default)]
    pub extract: Extract,
}

/// Where the safety label comes from: one label for the whole file, or a column with a value map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SafetyRule {
    /// Every row has this label (AdvBench is all `harmful`, Alpaca all `benign`).
    Fixed(SafetyLabel),
    /// The label is read from `column` and translated with `values` (matched case-insensitively),
    /// e.g. XSTest's `label`: `safe` → benign, `unsafe` → harmful. A value not in the map is a row error.
    Column {
        /// The column holding the label.
        column: String,
        /// Raw value → label.
        values: BTreeMap<String, SafetyLabel>,
    },
}

/// Keeps or drops rows by the value of a column (matched case-insensitively, trimmed).
///
/// Filtering is part of the manifest rather than the caller so that "HarmBench without copyright
/// rows" means the same set of prompts in every experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFilter {
    /// The column to test.
    pub column: String,
    /// If non-empty, only rows whose value is in this list are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
    /// Rows whose value is in this list are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

impl RowFilter {
    fn admits(&self, value: &str) -> bool {
        let v = value.trim().to_lowercase();
        let in_list = |l: &[String]| l.iter().any(|x| x.trim().to_lowercase() == v);
        (self.keep.is_empty() || in_list(&self.keep)) && !in_list(&self.drop)
    }
}

fn default_separator() -> String {
    "\n\n".to_string()
}

/// How the fields of one row become an [`Example`]. Field names are case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// Field whose value becomes the id suffix (`<dataset>-<value>`); default: the 0-based row index,
    /// counted before filtering so ids stay stable when filters change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Fields whose non-empty values, joined by `prompt_separator`, form the prompt. HarmBench lists
    /// `[ContextString, Behavior]` so contextual rows get their context first and standard rows
    /// (empty context) just the behaviour.
    pub prompt: Vec<String>,
    /// Separator between prompt parts.
    #[serde(default = "default_separator")]
    pub prompt_separator: String,
    /// The verifiable answer, if the dataset has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<AnswerRule>,
    /// Field holding a gold completion (worked solution, helpful output). Deliberately left unset
    /// for harmful sets: their `target` columns are attack strings ("Sure, here is ..."), not
    /// completions anyone should imitate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Field holding a category for per-category breakdowns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The safety label rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyRule>,
    /// Row filters, applied in order; a row must pass all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RowFilter>,
}

impl FieldMapping {
    /// A mapping with only a prompt field: the minimum for a prompt-only dataset.
    pub fn prompt_only(field: impl Into<String>) -> Self {
        FieldMapping {
            id: None,
            prompt: vec![field.into()],
            prompt_separator: default_separator(),
            answer: None,
            target: None,
            category: None,
            safety: None,
            filters: Vec::new(),
        }
    }

    /// Every field name the mapping reads (lowercased), for checking a CSV header up front.
    pub fn referenced_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        out.extend(self.id.iter().cloned());
        out.extend(self.prompt.iter().cloned());
        out.extend(self.answer.iter().map(|a| a.field.clone()));
        out.extend(self.target.iter().cloned());
        out.extend(self.category.iter().cloned());
        if let Some(SafetyRule::Column { column, .. }) = &self.safety {
            out.push(column.clone());
        }
        out.extend(self.filters.iter().map(|f| f.column.clone()));
        let mut out: Vec<String> = out.into_iter().map(|s| s.to_lowercase()).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// One raw row: field name (lowercased) → value, with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based line where the row starts.
    pub line: u64,
    /// 0-based index of the row among the data rows of the file.
    pub index: usize,
    /// Lowercased field name → value (JSON `null` becomes "", numbers their JSON text).
    pub fields: BTreeMap<String, String>,
}

/// The result of loading a file: examples plus an account of what was dropped and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Data rows found in the file (including filtered and skipped ones).
    pub rows: usize,
    /// Rows removed by the manifest's filters (not errors).
    pub filtered: usize,
    /// Rows that failed to parse or map and were skipped (`on_error: skip` only; always empty otherwise).
    pub skipped: Vec<SkippedRow>,
    /// The file that was read.
    pub path: PathBuf,
}

/// A row left out under `on_error: skip`, with the reason, so the skip can be reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line where the row starts.
    pub line: u64,
    /// Why it was skipped (the full error message, including file and line).
    pub message: String,
}

impl std::fmt::Display for SkippedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

const BOM: &str = "\u{feff}";

fn read_text(path: &Path) -> Result<String> {
    let bytes = crate::file::read_dataset_file(path, crate::file::MAX_DATASET_FILE_BYTES)?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(match s.strip_prefix(BOM) {
            Some(rest) => rest.to_string(),
            None => s,
        }),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count() as u64;
            Err(DataError::row(path, line, "file is not valid UTF-8"))
        }
    }
}

/// Reads every row of a file. File-level problems (unreadable file, not a regular file, larger
/// than [`crate::MAX_DATASET_FILE_BYTES`], broken CSV quoting, a JSON array that does not parse, a
/// duplicate header) are the outer error; row-level problems are
/// returned per row so the caller can apply its [`OnError`] policy.
pub fn read_records(path: &Path, format: Format) -> Result<Vec<Result<Record>>> {
    let text = read_text(path)?;
    match format {
        Format::Csv => read_csv(path, &text),
        Format::Jsonl => Ok(read_jsonl(path, &text)),
        Format::Json => read_json_array(path, &text),
    }
}

/// Finds a quoted field that is never closed, or closed and followed by more text (RFC 4180 allows
/// only a delimiter or line end there). The csv crate accepts both silently (the field swallows
/// the following rows), which would turn one stray quote into a wrong row count.
fn check_quotes(path: &Path, text: &str) -> Result<()> {
    let bytes = text.as_bytes();
    let (mut line, mut open_line) = (1u64, 0u64);
    let (mut in_quotes, mut field_start) = (false, true);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_quotes {
            if b == b'"' {
                match bytes.get(i + 1) {
                    Some(b'"') => i += 1,
                    None | Some(b',') | Some(b'\r') | Some(b'\n') => {
                        in_quotes = false;
                        field_start = false;
                    }
                    Some(_) => {
                        return Err(DataError::row(
                            path,
                            open_line,
                            format!(
                                "unbalanced quote: the quoted CSV field opened on this line closes on line {line} \
                                 and is followed by more text (a quote inside a field must be doubled)"
                            ),
                        ))
                    }
                }
            } else if b == b'\n' {
                line += 1;
            }
        } else {
            match b {
                b'"' if field_start => {
                    in_quotes = true;
                    open_line = line;
                }
                b',' | b'\r' => field_start = true,
                b'\n' => {
                    line += 1;
                    field_start = true;
                }
                _ => field_start = false,
            }
        }
        i += 1;
    }
    if in_quotes {
        return Err(DataError::row(
            path,
            open_line,
            "unbalanced quote: a quoted CSV field opened on this line is never closed",
        ));
    }
    Ok(())
}

fn read_csv(path: &Path, text: &str) -> Result<Vec<Result<Record>>> {
    check_quotes(path, text)?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| DataError::row(path, 1, format!("cannot read CSV header: {e}")))?
        .iter()
        .map(|h| h.trim().to_lowercase())
        .collect();
    if headers.iter().all(|h| h.is_empty()) {
        return Err(DataError::row(path, 1, "empty CSV header"));
    }
    for (i, h) in headers.iter().enumerate() {
        if !h.is_empty() && headers[..i].contains(h) {
            return Err(DataError::row(path, 1, format!("duplicate column `{h}` (headers are case-insensitive)")));
        }
    }
    let mut out = Vec::new();
    for (index, rec) in reader.records().enumerate() {
        match rec {
            Ok(r) => {
                let line = r.position().map(|p| p.line()).unwrap_or(0);
                let fields = headers.iter().cloned().zip(r.iter().map(str::to_string)).collect();
                out.push(Ok(Record { line, index, fields }));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!(
                        "row has {len} fields but the header has {expected_len} (a stray comma or quote?)"
                    ),
                    _ => format!("malformed CSV row: {e}"),
                };
                out.push(Err(DataError::row(path, line, message)));
            }
        }
    }
    Ok(out)
}

fn value_to_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn object_to_record(path: &Path, line: u64, index: usize, v: serde_json::Value) -> Result<Record> {
    match v {
        serde_json::Value::Object(map) => {
            let mut fields = BTreeMap::new();
            for (k, v) in map {
                let key = k.trim().to_lowercase();
                if fields.insert(key.clone(), value_to_string(&v)).is_some() {
                    return Err(DataError::row(path, line, format!("duplicate key `{key}` (keys are case-insensitive)")));
                }
            }
            Ok(Record { line, index, fields })
        }
        other => Err(DataError::row(
            path,
            line,
            format!("expected a JSON object, found {}", json_kind(&other)),
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn read_jsonl(path: &Path, text: &str) -> Vec<Result<Record>> {
    let mut out = Vec::new();
    let mut index = 0;
    for (i, raw) in text.split('\n').enumerate() {
        let line_text = raw.strip_suffix('\r').unwrap_or(raw);
        if line_text.trim().is_empty() {
            continue;
        }
        let line = i as u64 + 1;
        let rec = serde_json::from_str::<serde_json::Value>(line_text)
            .map_err(|e| DataError::row(path, line, format!("invalid JSON line (truncated?): {e}")))
            .and_then(|v| object_to_record(path, line, index, v));
        out.push(rec);
        index += 1;
    }
    out
}

/// 1-based start line of each top-level element of a syntactically valid JSON array.
fn array_element_lines(text: &str) -> Vec<u64> {
    let (mut depth, mut line) = (0usize, 1u64);
    let (mut in_str, mut escaped, mut expect) = (false, false, false);
    let mut starts = Vec::new();
    for b in text.bytes() {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'\n' => line += 1,
            b' ' | b'\t' | b'\r' => {}
            _ => {
                if depth == 1 && expect && b != b']' {
                    starts.push(line);
                    expect = false;
                }
                match b {
                    b'"' => in_str = true,
                    b'[' | b'{' => {
                        depth += 1;
                        if depth == 1 {
                            expect = true;
                        }
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    b',' if depth == 1 => expect = true,
                    _ => {}
                }
            }
        }
    }
    starts
}

fn read_json_array(path: &Path, text: &str) -> Result<Vec<Result<Record>>> {
    let values: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
        DataError::row(path, e.line() as u64, format!("invalid JSON array (truncated file?): {e}"))
    })?;
    let lines = array_element_lines(text);
    let aligned = lines.len() == values.len();
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let line = if aligned { lines[i] } else { 1 };
            object_to_record(path, line, i, v).map_err(|e| match e {
                DataError::Row { path, line, message } => {
                    DataError::Row { path, line, message: format!("array element {i}: {message}") }
                }
                other => other,
            })
        })
        .collect())
}

/// The GSM8K rule: text after the last `####`, trimmed, commas removed.
pub fn extract_after_last_hashes(text: &str) -> Option<String> {
    let pos = text.rfind("####")?;
    let ans: String = text[pos + 4..].trim().chars().filter(|&c| c != ',').collect();
    (!ans.is_empty()).then_some(ans)
}

/// The MATH rule: the content of the last `\boxed{...}`, with nested braces balanced.
pub fn extract_last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let inner = text[start..start + i].trim();
                    return (!inner.is_empty()).then(|| inner.to_string());
                }
            }
            _ => {}
        }
    }
    None
}

fn field<'a>(rec: &'a Record, name: &str, path: &Path) -> Result<&'a str> {
    let key = name.to_lowercase();
    rec.fields.get(&key).map(String::as_str).ok_or_else(|| {
        let available: Vec<&str> = rec.fields.keys().map(String::as_str).collect();
        DataError::row(
            path,
            rec.line,
            format!("missing field `{name}`; fields present: {}", available.join(", ")),
        )
    })
}

fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Maps one record; `Ok(None)` means a filter removed it.
fn map_record(rec: &Record, mapping: &FieldMapping, source: &str, path: &Path) -> Result<Option<Example>> {
    for f in &mapping.filters {
        if !f.admits(field(rec, &f.column, path)?) {
            return Ok(None);
        }
    }
    let id = match &mapping.id {
        Some(col) => match non_empty(field(rec, col, path)?) {
            Some(v) => format!("{source}-{v}"),
            None => return Err(DataError::row(path, rec.line, format!("empty id field `{col}`"))),
        },
        None => format!("{source}-{}", rec.index),
    };
    let mut parts = Vec::new();
    for p in &mapping.prompt {
        if let Some(v) = non_empty(field(rec, p, path)?) {
            parts.push(v);
        }
    }
    if parts.is_empty() {
        return Err(DataError::row(
            path,
            rec.line,
            format!("empty prompt (fields {})", mapping.prompt.join(", ")),
        ));
    }
    let prompt = parts.join(&mapping.prompt_separator);
    let answer = match &mapping.answer {
        None => None,
        Some(rule) => {
            let raw = field(rec, &rule.field, path)?;
            match rule.extract {
                Extract::Whole => non_empty(raw),
                Extract::AfterLastHashes => Some(extract_after_last_hashes(raw).ok_or_else(|| {
                    DataError::row(path, rec.line, format!("field `{}` has no `#### answer`", rule.field))
                })?),
                Extract::LastBoxed => Some(extract_last_boxed(raw).ok_or_else(|| {
                    DataError::row(path, rec.line, format!("field `{}` has no \\boxed{{...}}", rule.field))
                })?),
            }
        }
    };
    let target = match &mapping.target {
        Some(t) => non_empty(field(rec, t, path)?),
        None => None,
    };
    let category = match &mapping.category {
        Some(c) => non_empty(field(rec, c, path)?),
        None => None,
    };
    let safety = match &mapping.safety {
        None => None,
        Some(SafetyRule::Fixed(l)) => Some(*l),
        Some(SafetyRule::Column { column, values }) => {
            let raw = field(rec, column, path)?.trim().to_lowercase();
            let label = values.iter().find(|(k, _)| k.trim().to_lowercase() == raw).map(|(_, v)| *v);
            match label {
                Some(l) => Some(l),
                None => {
                    let known: Vec<&str> = values.keys().map(String::as_str).collect();
                    return Err(DataError::row(
                        path,
                        rec.line,
                        format!("safety column `{column}` has value `{raw}`, expected one of: {}", known.join(", ")),
                    ));
                }
            }
        }
    };
    Ok(Some(Example {
        id,
        prompt: keel_core::Prompt::Text(prompt),
        answer,
        target,
        safety,
        category,
        source: source.to_string(),
    }))
}

/// Loads any local file with a mapping, without hash verification: the entry point for your own
/// data. `source` becomes [`Example::source`] and the id prefix.
///
/// For CSV, every mapped column must be in the header (checked once, always fatal: it is a mapping
/// mistake, not a bad row). With [`OnError::Skip`], bad rows are collected in [`Loaded::skipped`];
/// if every row is bad the load fails anyway, with the first error.
pub fn load_file(path: &Path, format: Format, mapping: &FieldMapping, on_error: OnError, source: &str) -> Result<Loaded> {
    let records = read_records(path, format)?;
    if format == Format::Csv {
        if let Some(Ok(first)) = records.iter().find(|r| r.is_ok()) {
            let missing: Vec<String> =
                mapping.referenced_fields().into_iter().filter(|f| !first.fields.contains_key(f)).collect();
            if !missing.is_empty() {
                let cols: Vec<&str> = first.fields.keys().map(String::as_str).collect();
                return Err(DataError::row(
                    path,
                    1,
                    format!("column(s) {} not in the header; columns are: {}", missing.join(", "), cols.join(", ")),
                ));
            }
        }
    }
    let rows = records.len();
    let (mut examples, mut skipped, mut filtered) = (Vec::new(), Vec::new(), 0usize);
    let mut first_error: Option<DataError> = None;
    for rec in records {
        let mapped = rec.and_then(|r| map_record(&r, mapping, source, path));
        match mapped {
            Ok(Some(ex)) => examples.push(ex),
            Ok(None) => filtered += 1,
            Err(e) => match on_error {
                OnError::Fail => return Err(e),
                OnError::Skip => {
                    let line = if let DataError::Row { line, .. } = &e { *line } else { 0 };
                    skipped.push(SkippedRow { line, message: e.to_string() });
                    first_error.get_or_insert(e);
                }
            },
        }
    }
    if let Some(first) = first_error {
        if examples.is_empty() {
            return Err(first);
        }
        tracing::warn!(
            file = %path.display(),
            skipped = skipped.len(),
            first = %skipped[0],
            "skipped {} bad row(s) of {} (on_error: skip)",
            skipped.len(),
            path.display()
        );
    }
    Ok(Loaded { examples, rows, filtered, skipped, path: path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_answer_rule() {
        assert_eq!(extract_after_last_hashes("a #### 1\nb\n#### 1,234 ").as_deref(), Some("1234"));
        assert_eq!(extract_after_last_hashes("no marker"), None);
        assert_eq!(extract_after_last_hashes("x ####  "), None);
    }

    #[test]
    fn boxed_rule_balances_braces() {
        assert_eq!(extract_last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}}.").as_deref(), Some(r"\frac{1}{2}"));
        assert_eq!(extract_last_boxed(r"\boxed{unclosed"), None);
    }

    #[test]
    fn element_lines_follow_pretty_printing() {
        let text = "[\n  {\"a\": \"x,]\"},\n  {\"a\": \"[y\"}\n]\n";
        assert_eq!(array_element_lines(text), vec![2, 3]);
        assert_eq!(array_element_lines("[{\"a\":1},{\"a\":2}]"), vec![1, 1]);
    }

    #[test]
    fn filters_are_case_insensitive() {
        let f = RowFilter { column: "c".into(), keep: vec![], drop: vec!["Copyright".into()] };
        assert!(!f.admits(" copyright "));
        assert!(f.admits("standard"));
        let k = RowFilter { column: "c".into(), keep: vec!["a".into()], drop: vec![] };
        assert!(k.admits("A"));
        assert!(!k.admits("b"));
    }
}
