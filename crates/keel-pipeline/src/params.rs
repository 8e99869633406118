//! Stage parameters: declared types, type checking, and typed access for stage builders.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::diag::Span;
use crate::error::StageError;

/// The type of a stage parameter, checked at validation so that typos in values are reported with
/// their location before any work starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    /// `true` / `false`.
    Bool,
    /// An integer.
    Int,
    /// A number (integers are accepted).
    Float,
    /// A string.
    Str,
    /// A file or directory path (a string).
    Path,
    /// A list whose items all have the inner type.
    List(Box<ParamType>),
    /// A mapping (checked by the stage's own `check` or `Params::parse`).
    Map,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// Anything.
    Any,
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamType::Bool => write!(f, "bool"),
            ParamType::Int => write!(f, "int"),
            ParamType::Float => write!(f, "float"),
            ParamType::Str => write!(f, "string"),
            ParamType::Path => write!(f, "path"),
            ParamType::List(t) => write!(f, "list of {t}"),
            ParamType::Map => write!(f, "mapping"),
            ParamType::Enum(vs) => write!(f, "one of {}", vs.join("|")),
            ParamType::Any => write!(f, "any"),
        }
    }
}

/// A short word for a value's type, for "expected X, found Y" messages.
pub(crate) fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Sequence(_) => "list",
        Value::Mapping(_) => "mapping",
        Value::Tagged(_) => "tagged value",
    }
}

impl ParamType {
    /// Checks a value against the type; `Err` says what was found instead.
    pub fn check(&self, v: &Value) -> Result<(), String> {
        let ok = match (self, v) {
            (ParamType::Any, _) => true,
            (ParamType::Bool, Value::Bool(_)) => true,
            (ParamType::Int, Value::Number(n)) if n.is_f64() => return Err(float_for_int(n.as_f64().unwrap_or(f64::NAN))),
            (ParamType::Int, Value::Number(_)) => true,
            (ParamType::Float, Value::Number(_)) => true,
            (ParamType::Str | ParamType::Path, Value::String(_)) => true,
            (ParamType::Map, Value::Mapping(_)) => true,
            (ParamType::Enum(vs), Value::String(s)) => {
                if vs.contains(&s.as_str()) {
                    true
                } else {
                    return Err(format!("`{s}` is not one of {}", vs.join(", ")));
                }
            }
            (ParamType::List(inner), Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    inner.check(item).map_err(|e| format!("item {i}: {e}"))?;
                }
                true
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {self}, found {}", value_kind(v)))
        }
    }
}

/// "expected int" for a float, saying why it is not taken as an integer: YAML reads `1e15`,
/// `2.0` and integers beyond 2^64 as floats.
fn float_for_int(f: f64) -> String {
    if !f.is_finite() {
        return format!("expected int, found float `{f}`");
    }
    if f.abs() >= 1.8e19 {
        return format!("expected int, found float {f:e}: integers must fit in 64 bits (at most 18446744073709551615)");
    }
    if f.fract() == 0.0 {
        return format!(
            "expected int, found float {f:e}: YAML reads a number with an exponent or a `.` as a float; write the integer \
             as digits (`{f:.0}`)"
        );
    }
    format!("expected int, found float `{f}`")
}

/// Renders a bound without a trailing `.0` for whole numbers.
fn bound_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.0}")
    } else {
        format!("{x:e}")
    }
}

/// The allowed range of a numeric parameter (of each item, for a list of numbers), checked at
/// validation so that a number that sizes an allocation (examples generated, a vocabulary, a
/// model dimension) cannot ask for more than a machine could hold and abort the run later.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamRange {
    /// Smallest allowed value (inclusive), if any.
    pub min: Option<f64>,
    /// Largest allowed value (inclusive), if any.
    pub max: Option<f64>,
    /// Why the limit exists, shown with the error and by `keel list` (e.g. "examples are held in
    /// memory, about 1 KB each").
    pub why: &'static str,
}

impl ParamRange {
    /// Checks one number; `Err` names the value, the limit and why.
    pub fn check(&self, x: f64) -> Result<(), String> {
        let shown = bound_text(x);
        if let Some(min) = self.min.filter(|&m| x < m || x.is_nan()) {
            return Err(format!("{shown} is below the minimum {} ({})", bound_text(min), self.why));
        }
        if let Some(max) = self.max.filter(|&m| x > m || x.is_nan()) {
            return Err(format!("{shown} is above the maximum {} ({})", bound_text(max), self.why));
        }
        Ok(())
    }

    /// Checks a value: a number, or every number in a list; other values pass (the type check
    /// reports them).
    pub fn check_value(&self, v: &Value) -> Result<(), String> {
        match v {
            Value::Number(n) => n.as_f64().map_or(Ok(()), |x| self.check(x)),
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.check_value(item).map_err(|e| format!("item {i}: {e}"))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ParamRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => write!(f, "{}..={}", bound_text(lo), bound_text(hi)),
            (Some(lo), None) => write!(f, ">= {}", bound_text(lo)),
            (None, Some(hi)) => write!(f, "<= {}", bound_text(hi)),
            (None, None) => write!(f, "any"),
        }
    }
}

/// A declared parameter of a stage kind.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Name under `with:`.
    pub name: &'static str,
    /// Expected type.
    pub ty: ParamType,
    /// Default as YAML text (`"0.04"`, `"[1, 2]"`, `"~"` for an optional value that defaults to
    /// null); `None` makes the parameter required.
    pub default: Option<&'static str>,
    /// What it does, for `keel list`.
    pub doc: &'static str,
    /// The allowed range of a number (or of each number in a list), checked at validation with
    /// the value's location; set with [`ParamSpec::range`] or [`ParamSpec::at_most`].
    pub range: Option<ParamRange>,
}

impl ParamSpec {
    /// A required parameter.
    pub fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamSpec { name, ty, default: None, doc, range: None }
    }

    /// A parameter with a default given as YAML text.
    pub fn optional(name: &'static str, ty: ParamType, default: &'static str, doc: &'static str) -> Self {
        ParamSpec { name, ty, default: Some(default), doc, range: None }
    }

    /// Limits the value to `min..=max` (builder style); `why` says what the limit protects, e.g.
    /// `ParamSpec::optional("n_train", ParamType::Int, "2000", "examples").range(1.0, 1e8,
    /// "examples are generated in memory")`.
    pub fn range(mut self, min: f64, max: f64, why: &'static str) -> Self {
        self.range = Some(ParamRange { min: Some(min), max: Some(max), why });
        self
    }

    /// Limits the value to at most `max` (builder style); see [`ParamSpec::range`].
    pub fn at_most(mut self, max: f64, why: &'static str) -> Self {
        self.range = Some(ParamRange { min: None, max: Some(max), why });
        self
    }

    /// The type as `keel list` shows it: with the range, if any (`int, 1..=100000000`).
    pub fn type_text(&self) -> String {
        match &self.range {
            Some(r) => format!("{}, {r}", self.ty),
            None => self.ty.to_string(),
        }
    }

    /// The default parsed as YAML (`None` when required or when the default text is not valid YAML,
    /// which validation reports as a bug in the stage kind).
    pub fn default_value(&self) -> Option<Value> {
        self.default.and_then(|t| serde_yaml::from_str(t).ok())
    }
}

/// A semantic problem with a stage's parameters found by [`crate::StageKind::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    /// The parameter at fault (its location is used); empty for the stage as a whole.
    pub param: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl ParamProblem {
    /// A problem with one parameter.
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        ParamProblem { param: param.into(), message: message.into(), help: None }
    }

    /// Adds a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// The resolved parameters of one stage, defaults filled in.
///
/// Stage builders read them with [`Params::get`] or deserialize them all at once into a struct
/// with [`Params::parse`] (use `#[serde(deny_unknown_fields)]` on that struct).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    stage: String,
    values: BTreeMap<String, Value>,
    spans: BTreeMap<String, Span>,
}

impl Params {
    /// Parameters for `stage` from name/value pairs (used by validation and by tests of stage kinds).
    pub fn new(stage: impl Into<String>, values: BTreeMap<String, Value>) -> Self {
        Params { stage: stage.into(), values, spans: BTreeMap::new() }
    }

    pub(crate) fn set_span(&mut self, name: &str, span: Span) {
        self.spans.insert(name.to_string(), span);
    }

    /// The stage these parameters belong to.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// The raw value of a parameter.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// All values, sorted by name.
    pub fn values(&self) -> &BTreeMap<String, Value> {
        &self.values
    }

    /// Where the parameter was written (`None` for defaults).
    pub fn span(&self, name: &str) -> Option<&Span> {
        self.spans.get(name)
    }

    /// A parameter converted to `T`; a missing parameter or a value of the wrong shape is an error
    /// naming the stage and parameter.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, StageError> {
        let v = self.values.get(name).ok_or_else(|| {
            StageError::msg(format!("stage `{}` has no parameter `{name}`", self.stage))
        })?;
        serde_yaml::from_value(v.clone()).map_err(|e| {
            StageError::with_source(format!("parameter `{name}` of stage `{}`", self.stage), e)
        })
    }

    /// A parameter converted to `T`, or `None` when it is absent or null.
    pub fn get_opt<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StageError> {
        match self.values.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.get(name).map(Some),
        }
    }

    /// All parameters deserialized into a struct.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        let map: serde_yaml::Mapping =
            self.values.iter().map(|(k, v)| (Value::String(k.clone()), v.clone())).collect();
        serde_yaml::from_value(Value::Mapping(map)).map_err(|e| {
            StageError::with_source(format!("parameters of stage `{}`", self.stage), e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_checks() {
        assert!(ParamType::Int.check(&Value::from(3)).is_ok());
        assert_eq!(ParamType::Int.check(&Value::from(0.5)).unwrap_err(), "expected int, found float `0.5`");
        let e = ParamType::Int.check(&Value::from(1e15)).unwrap_err();
        assert!(e.contains("1e15") && e.contains("`1000000000000000`"), "{e}");
        let e = ParamType::Int.check(&Value::from(1e20)).unwrap_err();
        assert!(e.contains("64 bits"), "{e}");
        assert!(ParamType::Float.check(&Value::from(3)).is_ok());
        let l = ParamType::List(Box::new(ParamType::Int));
        assert_eq!(
            l.check(&serde_yaml::from_str("[1, x]").unwrap()).unwrap_err(),
            "item 1: expected int, found string"
        );
        let e = ParamType::Enum(&["a", "b"]);
        assert_eq!(e.check(&Value::from("c")).unwrap_err(), "`c` is not one of a, b");
    }

    #[test]
    fn ranges() {
        let r = ParamRange { min: Some(1.0), max: Some(1e8), why: "held in memory" };
        assert!(r.check(1.0).is_ok() && r.check(1e8).is_ok());
        assert_eq!(r.check(0.0).unwrap_err(), "0 is below the minimum 1 (held in memory)");
        assert_eq!(r.check(9.223372036854776e18).unwrap_err(), "9.223372036854776e18 is above the maximum 100000000 (held in memory)");
        assert!(r.check(f64::NAN).is_err());
        let list: Value = serde_yaml::from_str("[1, 200000000]").unwrap();
        assert_eq!(r.check_value(&list).unwrap_err(), "item 1: 200000000 is above the maximum 100000000 (held in memory)");
        assert!(r.check_value(&Value::from("x")).is_ok());
        assert_eq!(r.to_string(), "1..=100000000");
        let spec = ParamSpec::optional("n", ParamType::Int, "2", "n").at_most(65536.0, "why");
        assert_eq!(spec.type_text(), "int, <= 65536");
    }

    #[test]
    fn typed_access() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct P {
            beta: f64,
            n: u32,
        }
        let mut m = BTreeMap::new();
        m.insert("beta".to_string(), Value::from(0.5));
        m.insert("n".to_string(), Value::from(3));
        let p = Params::new("learn", m);
        assert_eq!(p.get::<f64>("beta").unwrap(), 0.5);
        assert_eq!(p.parse::<P>().unwrap(), P { beta: 0.5, n: 3 });
        let e = p.get::<String>("missing").unwrap_err();
        assert_eq!(e.to_string(), "stage `learn` has no parameter `missing`");
        assert!(p.get::<bool>("n").is_err());
    }
}
