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

/// Where in the TOML text a character stands: what a substituted value must be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Outside any string: a key, a number, a boolean.
    Bare,
    /// `"..."`: escapes apply.
    Basic,
    /// `'...'`: no escapes.
    Literal,
    /// `"""..."""` over lines: escapes apply.
    MultiBasic,
    /// `'''...'''` over lines: no escapes.
    MultiLiteral,
    /// `# ...` to the end of the line: left alone.
    Comment,
}

/// Replaces every `${NAME}` and `${NAME:-default}` outside comments using `lookup`; an empty
/// value counts as unset for `:-`, as in the shell. The text is read once from start to end,
/// so a variable inside a `"""` string spanning lines is written for that string, and a `#`
/// inside one is text, not a comment.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, MissingVar> {
    let mut out = String::with_capacity(text.len());
    let mut place = Place::Bare;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with('$') && place != Place::Comment {
            if rest.starts_with("$${") {
                out.push_str("${");
                i += 3;
                continue;
            }
            let found = substitute(rest, place, &lookup).map_err(|mut m| {
                m.offset += i;
                m
            })?;
            if let Some((written, used)) = found {
                out.push_str(&written);
                i += used;
                continue;
            }
        }
        let (next, len) = step(place, rest);
        out.push_str(&rest[..len]);
        place = next;
        i += len;
    }
    Ok(out)
}

/// The place after the token at the start of `rest` (read in `place`), and the token's length.
fn step(place: Place, rest: &str) -> (Place, usize) {
    let c = rest.chars().next().expect("rest is not empty");
    let one = c.len_utf8();
    match place {
        Place::Bare if rest.starts_with(r#"""""#) => (Place::MultiBasic, 3),
        Place::Bare if rest.starts_with("'''") => (Place::MultiLiteral, 3),
        Place::Bare if c == '"' => (Place::Basic, one),
        Place::Bare if c == '\'' => (Place::Literal, one),
        Place::Bare if c == '#' => (Place::Comment, one),
        // An escape takes the next character with it (`\"` does not end the string).
        Place::Basic | Place::MultiBasic if c == '\\' => (
            place,
            one + rest[one..].chars().next().map_or(0, char::len_utf8),
        ),
        Place::Basic if c == '"' => (Place::Bare, one),
        Place::Literal if c == '\'' => (Place::Bare, one),
        // A one-line string or a comment ends with its line (an unterminated string is TOML's to report).
        Place::Basic | Place::Literal | Place::Comment if c == '\n' => (Place::Bare, one),
        Place::MultiBasic if rest.starts_with(r#"""""#) => (Place::Bare, 3),
        Place::MultiLiteral if rest.starts_with("'''") => (Place::Bare, 3),
        other => (other, one),
    }
}

/// The value of the `${...}` at the start of `rest`, written for `place`, and how many bytes it
/// replaces; `None` when no complete `${...}` starts there on its line (a lone `$` stays).
fn substitute(
    rest: &str,
    place: Place,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<(String, usize)>, MissingVar> {
    let Some(body) = rest.strip_prefix("${") else {
        return Ok(None);
    };
    let line = &body[..body.find('\n').unwrap_or(body.len())];
    let Some(body_end) = line.find('}') else {
        return Ok(None);
    };
    let body = &body[..body_end];
    let (name, default) = match body.split_once(":-") {
        Some((n, d)) => (n.trim(), Some(d)),
        None => (body.trim(), None),
    };
    let missing = |unsafe_value| MissingVar {
        name: name.to_string(),
        offset: 0,
        unsafe_value,
    };
    let written = match (lookup(name).filter(|v| !v.is_empty()), default) {
        (Some(value), _) => written_for(place, &value).map_err(|why| missing(Some(why)))?,
        // The default is written in the file by its author, already in TOML's terms.
        (None, Some(default)) => default.to_string(),
        (None, None) => return Err(missing(None)),
    };
    Ok(Some((written, 2 + body_end + 1)))
}

/// `value` written for where it stands: escaped in a basic string, as it is where that is safe.
fn written_for(place: Place, value: &str) -> Result<String, &'static str> {
    match place {
        Place::Basic | Place::MultiBasic => {
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
        Place::Literal if value.contains(['\'', '\n', '\r']) => {
            Err("it holds a ' or a line break, which a '...' string cannot hold; put the variable in \"...\" instead")
        }
        Place::MultiLiteral if value.contains("'''") => Err("it holds ''', which would end the '''...''' string; put the variable in \"\"\"...\"\"\" instead"),
        Place::Literal | Place::MultiLiteral => Ok(value.to_string()),
        Place::Bare if value.chars().all(|c| c.is_alphanumeric() || "+-._:".contains(c)) => Ok(value.to_string()),
        Place::Bare => Err("it stands outside a string, where only a plain number or word may; put the variable in \"...\""),
        Place::Comment => unreachable!("comments are not interpolated"),
    }
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
        assert_eq!(
            interpolate(text, env).unwrap(),
            "# uses ${NOPE}\na = \"k1:9092#x\" # ${NOPE}\nb = '#k1:9092'"
        );
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
        assert_eq!(
            interpolate("a = '${PLAIN}'\nb = ${PLAIN}", lookup).unwrap(),
            "a = '250'\nb = 250"
        );
        let err = interpolate("rate = ${INJECT}", lookup).unwrap_err();
        assert!(err.unsafe_value.unwrap().contains("outside a string"));
    }

    /// A `"""` string spans lines: a variable in it is escaped for it, and a `#` in it is text.
    #[test]
    fn variables_inside_multi_line_strings_are_written_for_them() {
        let lookup = |n: &str| match n {
            "NAME" => Some("o\"brien # not a comment".to_string()),
            "QUOTES" => Some("a'''b".to_string()),
            _ => None,
        };
        let text = "msg = \"\"\"\nHello ${NAME}\nissue #${NAME}\n\"\"\"\nlit = '''\n${NAME}\n'''\n# ${NOPE}\n";
        let parsed: toml::Table = toml::from_str(&interpolate(text, lookup).unwrap()).unwrap();
        assert_eq!(
            parsed["msg"].as_str().unwrap(),
            "Hello o\"brien # not a comment\nissue #o\"brien # not a comment\n"
        );
        assert_eq!(
            parsed["lit"].as_str().unwrap(),
            "o\"brien # not a comment\n"
        );
        let err = interpolate("x = '''\n${QUOTES}\n'''", lookup).unwrap_err();
        assert_eq!(err.name, "QUOTES");
        assert!(err.unsafe_value.unwrap().contains("'''"));
    }

    #[test]
    fn escaped_and_lone_dollars_stay() {
        assert_eq!(
            interpolate("p = \"$${HOST} $5 $\"", env).unwrap(),
            "p = \"${HOST} $5 $\""
        );
    }
}
