//! `str.format`-style placeholder filling for upstream prompt templates.

/// Fills `{name}` placeholders of `template` in one pass, the way Python's `str.format` does for
/// the upstream templates (which use no other braces): each placeholder is replaced by its value,
/// and the values are not scanned again, so a response that itself contains `{response}` stays as
/// written. A `{...}` whose name is not in `values` is kept literally.
///
/// ```
/// use keel_safety::judges::fill_template;
/// let t = "User: {prompt}\nModel: {response}";
/// assert_eq!(fill_template(t, &[("prompt", "say {response}"), ("response", "ok")]), "User: say {response}\nModel: ok");
/// ```
pub fn fill_template(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match values.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::fill_template;

    #[test]
    fn placeholders_fill_once_and_unknown_braces_stay() {
        assert_eq!(fill_template("{a}{b}{a}", &[("a", "1"), ("b", "{a}")]), "1{a}1");
        assert_eq!(fill_template("x {c} y {", &[("a", "1")]), "x {c} y {");
        assert_eq!(fill_template("", &[("a", "1")]), "");
    }
}
