//! `${NAME}` / `${NAME:-default}` substitution on the raw pipeline text, before TOML parsing.
//!
//! Substituting the text (as Vector does) lets a variable stand anywhere, keeps line numbers
//! intact for error messages, and leaves the file valid TOML for editors. `$${` writes a literal `${`.
//! Comments are left alone, so a comment may mention `${NAME}` without it being required.

/// A `${NAME}` that has no value and no default.
#[derive(Debug, PartialEq)]
pub struct MissingVar {
    pub name: String,
    /// Byte offset of the `${` in the source text.
    pub offset: usize,
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
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return Some(i),
            None => {}
        }
    }
    None
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
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(MissingVar {
                    name: name.to_string(),
                    offset: consumed + start,
                })
            }
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
    fn escaped_and_lone_dollars_stay() {
        assert_eq!(interpolate("p = \"$${HOST} $5 $\"", env).unwrap(), "p = \"${HOST} $5 $\"");
    }
}
