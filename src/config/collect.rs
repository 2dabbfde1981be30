//! Every key that is missing or wrong, at once. Serde stops at the first problem of a document;
//! a user fixing a file one `missing field` at a time asked for the whole list. So when a file
//! does not deserialize, the entry at fault is taken out of the parsed document and it is tried
//! again, until it deserializes or nothing more can be learned.
//!
//! Why that finds everything: a table reports a missing field only after it has read every
//! entry it has, so once an error is about a field missing from a table, every entry of that
//! table was fine; taking the table out of its parent lets the parent go on to its next entry.

use serde::de::DeserializeOwned;
use std::ops::Range;
use toml::de::{DeTable, DeValue, Deserializer};
use toml::Spanned;

/// At most this many problems are collected (a file that is not a pipeline at all would
/// otherwise list every key it has).
const MAX_PROBLEMS: usize = 30;

/// Deserializes `text`; on failure, every problem found as (byte range, message), in file order.
pub fn deserialize_all<T: DeserializeOwned>(text: &str) -> Result<T, Vec<(Range<usize>, String)>> {
    let mut doc = DeTable::parse(text)
        .map_err(|e| vec![(e.span().unwrap_or(0..0), e.message().to_string())])?;
    let mut problems: Vec<(Range<usize>, String)> = Vec::new();
    // Entries taken out: (span of the table that held them, key, dotted path), so the `missing
    // field` that follows from taking out a required one is known as a consequence, not a new
    // problem, and a bad value's problem can name its key.
    let mut taken: Vec<(Range<usize>, String, String)> = Vec::new();
    for _ in 0..4 * MAX_PROBLEMS {
        let error = match T::deserialize(Deserializer::from(doc.clone())) {
            Ok(value) if problems.is_empty() => return Ok(value),
            Ok(_) => break,
            Err(e) => e,
        };
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_string);
        let consequence = missing
            .as_ref()
            .is_some_and(|k| taken.iter().any(|(s, t, _)| *s == span && t == k));
        if !consequence {
            problems.push((span.clone(), message));
        }
        if problems.len() >= MAX_PROBLEMS || span == doc.span() {
            break; // the root itself lacks a field: every other entry of it was read
        }
        let root_span = doc.span();
        // A missing field names a table: take that table out. Anything else names an entry.
        let removed = take_out(
            doc.get_mut(),
            root_span,
            "",
            &span,
            missing.is_some(),
            &mut taken,
        );
        if !removed {
            break;
        }
        // A value the parser refused: say whose (its message names only the value).
        if let (Some(last), None, Some((_, _, path))) =
            (problems.last_mut(), &missing, taken.last())
        {
            if !consequence
                && !last.1.starts_with("unknown field")
                && !last.1.contains(path.as_str())
            {
                last.1 = format!("{path}: {}", last.1);
            }
        }
    }
    problems.sort_by_key(|(s, _)| s.start);
    problems.dedup();
    Err(problems)
}

/// Takes out of `table` (whose own span is `table_span`) the entry `span` points at: with
/// `whole_table`, the table whose span `span` is; else the deepest entry whose key or value
/// holds `span`. Notes what it took in `taken`. (A table's span is its header's, so nested
/// tables are searched whatever their span.)
fn take_out(
    table: &mut DeTable<'_>,
    table_span: Range<usize>,
    prefix: &str,
    span: &Range<usize>,
    whole_table: bool,
    taken: &mut Vec<(Range<usize>, String, String)>,
) -> bool {
    let path_of = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    let holds = |r: &Range<usize>| {
        r.start <= span.start && span.end <= r.end && (r.start < r.end || r == span)
    };
    let mut found: Option<String> = None;
    for (key, value) in table.iter_mut() {
        let value_span = value.span();
        let nested = matches!(value.get_ref(), DeValue::Table(_) | DeValue::Array(_));
        if whole_table && value_span == *span && !matches!(value.get_ref(), DeValue::Array(_)) {
            found = Some(key.get_ref().to_string());
            break;
        }
        if !whole_table && !nested && (holds(&key.span()) || holds(&value_span)) {
            found = Some(key.get_ref().to_string());
            break;
        }
        let taken_inside = match value.get_mut() {
            DeValue::Table(inner) => take_out(
                inner,
                value_span.clone(),
                &path_of(key.get_ref()),
                span,
                whole_table,
                taken,
            ),
            DeValue::Array(items) => {
                let elements: &mut [Spanned<DeValue<'_>>] = items.as_mut();
                let mut at_fault = None;
                for (i, item) in elements.iter_mut().enumerate() {
                    let item_span = item.span();
                    if whole_table && item_span == *span {
                        at_fault = Some(i);
                        break;
                    }
                    if let DeValue::Table(inner) = item.get_mut() {
                        if take_out(
                            inner,
                            item_span,
                            &path_of(key.get_ref()),
                            span,
                            whole_table,
                            taken,
                        ) {
                            return true;
                        }
                    }
                }
                if let Some(i) = at_fault {
                    // An element of an array of tables lacks a field: the array goes on without it.
                    let kept: Vec<Spanned<DeValue<'_>>> = items
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, v)| v.clone())
                        .collect();
                    *items = kept.into_iter().collect();
                    return true;
                }
                false
            }
            _ => false,
        };
        if taken_inside {
            return true;
        }
        if !whole_table && (holds(&key.span()) || holds(&value_span)) {
            found = Some(key.get_ref().to_string());
            break;
        }
    }
    match found {
        Some(key) => {
            table.remove(key.as_str());
            let path = path_of(&key);
            taken.push((table_span, key, path));
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        section: Section,
        #[serde(default)]
        other: Option<Section>,
        #[serde(default)]
        item: Vec<Section>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        a: String,
        #[serde(default)]
        b: u32,
    }

    fn lines(text: &str, problems: &[(Range<usize>, String)]) -> Vec<String> {
        problems
            .iter()
            .map(|(s, m)| format!("{}: {m}", text[..s.start].matches('\n').count() + 1))
            .collect()
    }

    #[test]
    fn every_missing_and_wrong_key_is_listed_once() {
        let text = "name = 1\n[section]\nb = \"x\"\nc = 2\n[other]\na = \"ok\"\nb = -1\n[[item]]\na = \"ok\"\n[[item]]\nb = 2\n";
        let problems = deserialize_all::<Doc>(text).unwrap_err();
        let shown = lines(text, &problems);
        assert!(
            shown.iter().any(|l| l.starts_with("1: name: invalid type")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|l| l.starts_with("3: section.b: invalid type")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|l| l.starts_with("4: unknown field `c`")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|l| l.contains("missing field `a`")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|l| l.starts_with("7: other.b: ")),
            "the negative b of [other]: {shown:?}"
        );
        assert!(
            shown
                .iter()
                .filter(|l| l.contains("missing field `a`"))
                .count()
                == 2,
            "[section] and the second [[item]]: {shown:?}"
        );
        assert!(
            !shown.iter().any(
                |l| l.contains("missing field `name`") || l.contains("missing field `section`")
            ),
            "consequences are not listed: {shown:?}"
        );
    }

    #[test]
    fn a_good_document_deserializes() {
        let doc: Doc = deserialize_all("name = \"n\"\n[section]\na = \"x\"\n").unwrap();
        assert_eq!(doc.name, "n");
        let problems = deserialize_all::<Doc>("[section]\na = \"x\"\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].1.contains("missing field `name`"));
    }
}
