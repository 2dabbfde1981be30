//! `${NAME}` / `${NAME:-default}` substitution on the raw pipeline text, before TOML parsing.
//!
//! Substituting the text (as Vector does) lets a variable stand anywhere, keeps line numbers
//! intact for error messages, and leaves the file valid TOML for editors. `$${` writes a literal `${`.
//! Comments are left alone, so a comment may mention `${NAME}` without it being required.
//!
//! A value is written for where it stands, so it can never change the file's meaning: inside a
//! `"..."` string it is escaped (a password with `"`, `\` or a newline stays one string); inside
//! a `'...'` string, which has no escapes, a value that would end the string is refused; outside
//! any string (`rate = ${RATE}`) only a plain word or number may stand.

/// A `${NAME}` that cannot be substituted.
#[derive(Debug, PartialEq)]
pub struct MissingVar {
    pub name: String,
    /// Byte offset of the `${` in the source text.
    pub offset: usize,
    /// `None`: the variable has no value and no default; otherwise why its value cannot stand there.
    pub unsafe_value: Option<&'static str>,
}

/// Replaces every `${NAME}` and `${NAME:-default}` outside comments using `lookup`; an empty
/// value counts as unset for `:-`, as in the shell.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, MissingVar> {
    let mut out = String::with_capacity(text.len());
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let code_len = comment_start(line).unwrap_or(line.len());
        let code = interpolate_code(&line[..code_len], &lookup).map_err(|mut m| {
            m.offset += line_start;
            m
        })?;
        out.push_str(&code);
        out.push_str(&line[code_len..]);
        line_start += line.len();
    }
    Ok(out)
}

/// Where a `#` comment starts in one line, ignoring `#` inside single-line strings.
fn comment_start(line: &str) -> Option<usize> {
    scan(line, line.len()).1
}

/// The quote open at byte `upto` of a line (`"`, `'`, or none), and where a comment starts
/// before `upto`, if one does.
fn scan(line: &str, upto: usize) -> (Option<char>, Option<usize>) {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if i >= upto {
            break;
        }
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return (None, Some(i)),
            None => {}
        }
    }
    (quote, None)
}

/// `value` written for where it stands: escaped in a basic string, as it is where that is safe.
fn written_for(quote: Option<char>, value: &str) -> Result<String, &'static str> {
    match quote {
        Some('"') => {
            let mut out = String::with_capacity(value.len());
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            Ok(out)
        }
        Some(_) if value.contains(['\'', '\n', '\r']) => {
            Err("it holds a ' or a line break, which a '...' string cannot hold; put the variable in \"...\" instead")
        }
        Some(_) => Ok(value.to_string()),
        None if value.chars().all(|c| c.is_alphanumeric() || "+-._:".contains(c)) => Ok(value.to_string()),
        None => Err("it stands outside a string, where only a plain number or word may; put the variable in \"...\""),
    }
}

fn interpolate_code(text: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, MissingVar> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut consumed = 0;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            consumed += start + 3;
            continue;
        }
        let Some(body_end) = after.strip_prefix("${").and_then(|b| b.find('}')) else {
            out.push('$');
            rest = &after[1..];
            consumed += start + 1;
            continue;
        };
        let body = &after[2..2 + body_end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n.trim(), Some(d)),
            None => (body.trim(), None),
        };
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => {
                let (quote, _) = scan(text, consumed + start);
                match written_for(quote, &value) {
                    Ok(written) => out.push_str(&written),
                    Err(why) => return Err(MissingVar { name: name.to_string(), offset: consumed + start, unsafe_value: Some(why) }),
                }
            }
            // The default is written in the file by its author, already in TOML's terms.
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(MissingVar { name: name.to_string(), offset: consumed + start, unsafe_value: None }),
        }
        let used = 2 + body_end + 1;
        rest = &after[used..];
        consumed += start + used;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("k1:9092".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_values_and_defaults() {
        let text = "a = \"${HOST}\"\nb = \"${NOPE:-embedded}\"\nc = \"${EMPTY:-x}\"";
        assert_eq!(
            interpolate(text, env).unwrap(),
            "a = \"k1:9092\"\nb = \"embedded\"\nc = \"x\""
        );
    }

    #[test]
    fn missing_variable_reports_its_offset() {
        let text = "a = 1\nb = \"${NOPE}\"";
        let err = interpolate(text, env).unwrap_err();
        assert_eq!(err.name, "NOPE");
        assert_eq!(err.offset, text.find("${").unwrap());
    }

    #[test]
    fn comments_are_not_interpolated() {
        let text = "# uses ${NOPE}\na = \"${HOST}#x\" # ${NOPE}\nb = '#${HOST}'";
        assert_eq!(interpolate(text, env).unwrap(), "# uses ${NOPE}\na = \"k1:9092#x\" # ${NOPE}\nb = '#k1:9092'");
    }

    #[test]
    fn values_with_quotes_backslashes_and_newlines_stay_one_string() {
        let nasty = "p\"a\\ss\nx = 1\t\u{1}";
        let lookup = |n: &str| (n == "V").then(|| nasty.to_string());
        let text = "a = \"${V}\"\nb = \"pre-${V}-post\"\n";
        let parsed: toml::Table = toml::from_str(&interpolate(text, lookup).unwrap()).unwrap();
        assert_eq!(parsed["a"].as_str(), Some(nasty));
        assert_eq!(parsed["b"].as_str().unwrap(), format!("pre-{nasty}-post"));
        assert_eq!(parsed.len(), 2, "nothing injected: {parsed:?}");
    }

    #[test]
    fn a_value_that_would_end_a_literal_string_or_a_bare_value_is_refused() {
        let lookup = |n: &str| match n {
            "QUOTE" => Some("it's".to_string()),
            "PLAIN" => Some("250".to_string()),
            "INJECT" => Some("1\nevil = true".to_string()),
            _ => None,
        };
        let err = interpolate("a = '${QUOTE}'", lookup).unwrap_err();
        assert_eq!((err.name.as_str(), err.offset), ("QUOTE", 5));
        assert!(err.unsafe_value.unwrap().contains("'...'"));
        assert_eq!(interpolate("a = '${PLAIN}'\nb = ${PLAIN}", lookup).unwrap(), "a = '250'\nb = 250");
        let err = interpolate("rate = ${INJECT}", lookup).unwrap_err();
        assert!(err.unsafe_value.unwrap().contains("outside a string"));
    }

    #[test]
    fn escaped_and_lone_dollars_stay() {
        assert_eq!(interpolate("p = \"$${HOST} $5 $\"", env).unwrap(), "p = \"${HOST} $5 $\"");
    }
}
