//! Lookup tables (enrichment): `[[lookup]]` loads a CSV or JSON-lines file keyed by one of its
//! columns, and a metric script reads a column of the row a record's field names with
//! `lookup("items", "item_id", "category")`, in Rust, once per record and metric (a hash
//! lookup; no script call). The tables are part of the compiled metric set, so a changed file
//! is a hot reload like a changed script: checked completely, then swapped in between batches,
//! window state kept.

use crate::event::Text;
use crate::script::ScriptError;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The key a record whose field has no row in the table is counted under, unless the lookup
/// gives a default.
pub const MISSING_KEY: &str = "__missing__";

/// `[[lookup]]`: a table metric scripts can read with `lookup(name, field, column)`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// What scripts call it: `lookup("items", ...)`.
    pub name: String,
    /// The file: CSV with a header row (`.csv`), or one JSON object per line (`.jsonl`,
    /// `.ndjson`); relative to the pipeline file. Reloaded when it changes.
    pub from: PathBuf,
    /// The column whose value a record's field is matched with.
    pub key: String,
    /// Rows at most: a larger file is a load error, so a wrong file cannot fill the memory.
    #[serde(
        default = "default_max_rows",
        deserialize_with = "crate::base::de::number"
    )]
    pub max_rows: usize,
}

fn default_max_rows() -> usize {
    1_000_000
}

/// One cell: numbers are numbers (a metric can sum a list price), the rest text.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(Text),
    Number(f64),
    Empty,
}

impl Cell {
    fn parse(text: &str) -> Cell {
        match text.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Cell::Number(n),
            _ if text.is_empty() => Cell::Empty,
            _ => Cell::Text(Text::from(text)),
        }
    }
}

/// A loaded table: its columns, and the row of each key.
#[derive(Debug, Default)]
pub struct Table {
    pub name: String,
    columns: Vec<String>,
    rows: HashMap<Text, Box<[Cell]>, foldhash::fast::RandomState>,
    /// The bytes its file held (what the table costs in memory, roughly, and reported).
    pub bytes: usize,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// One column by key: what a selector of that column reads per record, the cell in the
    /// map's own slot instead of behind the row's pointer.
    pub fn column_map(&self, column: usize) -> HashMap<Text, Cell, foldhash::fast::RandomState> {
        self.rows
            .iter()
            .filter_map(|(k, row)| row.get(column).map(|c| (k.clone(), c.clone())))
            .collect()
    }

    /// Reads the table `config` names; the error says which file and line.
    pub fn load(config: &LookupConfig) -> Result<Table, ScriptError> {
        let path = &config.from;
        let text = std::fs::read_to_string(path).map_err(|e| {
            problem(
                path,
                None,
                format!("lookup {:?}: cannot read the file: {e}", config.name),
            )
        })?;
        let json = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson" | "json")
        );
        let (columns, rows) = if json {
            json_lines(&text, path)?
        } else {
            csv_rows(&text, path)?
        };
        let key = columns
            .iter()
            .position(|c| *c == config.key)
            .ok_or_else(|| {
                problem(
                    path,
                    Some(1),
                    format!(
                        "lookup {:?}: no column {:?} to key it by (columns: {})",
                        config.name,
                        config.key,
                        columns.join(", ")
                    ),
                )
            })?;
        let mut table = Table {
            name: config.name.clone(),
            columns,
            rows: HashMap::default(),
            bytes: text.len(),
        };
        for (line, row) in rows {
            if table.rows.len() >= config.max_rows {
                return Err(problem(
                    path,
                    Some(line),
                    format!(
                        "lookup {:?} has more than max_rows = {} rows",
                        config.name, config.max_rows
                    ),
                ));
            }
            let k = match &row[key] {
                Cell::Text(t) => t.clone(),
                Cell::Number(n) => Text::from(n.to_string().as_str()),
                Cell::Empty => {
                    return Err(problem(
                        path,
                        Some(line),
                        format!("the key column {:?} is empty", config.key),
                    ))
                }
            };
            if table.rows.insert(k.clone(), row).is_some() {
                return Err(problem(
                    path,
                    Some(line),
                    format!(
                        "key {:?} has a row already (a key names one row)",
                        k.as_str()
                    ),
                ));
            }
        }
        Ok(table)
    }
}

type Rows = Vec<(usize, Box<[Cell]>)>;

/// A problem with a table's file, at a line when there is one.
fn problem(path: &Path, line: Option<usize>, message: String) -> ScriptError {
    ScriptError {
        path: path.to_path_buf(),
        line,
        column: None,
        message,
    }
}

fn csv_rows(text: &str, path: &Path) -> Result<(Vec<String>, Rows), ScriptError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .map_err(|e| problem(path, Some(1), e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize);
            problem(path, line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line()) as usize;
        rows.push((line, record.iter().map(Cell::parse).collect()));
    }
    Ok((columns, rows))
}

fn json_lines(text: &str, path: &Path) -> Result<(Vec<String>, Rows), ScriptError> {
    let mut columns: Vec<String> = Vec::new();
    let mut objects = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| problem(path, Some(i + 1), format!("not a JSON object: {e}")))?;
        for k in object.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
        objects.push((i + 1, object));
    }
    let rows = objects
        .into_iter()
        .map(|(line, o)| {
            let row = columns
                .iter()
                .map(|c| match o.get(c) {
                    Some(serde_json::Value::String(s)) => Cell::Text(Text::from(s.as_str())),
                    Some(serde_json::Value::Number(n)) => {
                        n.as_f64().map_or(Cell::Empty, Cell::Number)
                    }
                    None | Some(serde_json::Value::Null) => Cell::Empty,
                    Some(other) => Cell::Text(Text::from(other.to_string().as_str())),
                })
                .collect();
            (line, row)
        })
        .collect();
    Ok((columns, rows))
}

/// The loaded tables of a pipeline, by name.
#[derive(Debug, Default, Clone)]
pub struct Lookups(Vec<Arc<Table>>);

impl Lookups {
    /// Loads every table; on failure, every problem.
    pub fn load(configs: &[LookupConfig]) -> Result<Lookups, Vec<ScriptError>> {
        let mut tables = Vec::new();
        let mut problems = Vec::new();
        for c in configs {
            if tables.iter().any(|t: &Arc<Table>| t.name == c.name) {
                problems.push(problem(
                    &c.from,
                    None,
                    format!("lookup name {:?} is used twice", c.name),
                ));
                continue;
            }
            match Table::load(c) {
                Ok(t) => {
                    tracing::info!(lookup = %c.name, rows = t.len(), bytes = t.bytes, file = %c.from.display(), "lookup table loaded");
                    tables.push(Arc::new(t));
                }
                Err(e) => problems.push(e),
            }
        }
        match problems.is_empty() {
            true => Ok(Lookups(tables)),
            false => Err(problems),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Table>> {
        self.0.iter().find(|t| t.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|t| t.name.as_str()).collect()
    }

    pub fn tables(&self) -> &[Arc<Table>] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(file: &str, text: &str) -> (tempfile::TempDir, LookupConfig) {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join(file);
        std::fs::write(&from, text).unwrap();
        let config = LookupConfig {
            name: "items".into(),
            from,
            key: "item_id".into(),
            max_rows: 10,
        };
        (dir, config)
    }

    #[test]
    fn csv_and_json_lines_give_the_same_rows_with_numbers_as_numbers() {
        let (_d, csv) = table(
            "items.csv",
            "item_id,category,list_price\nitem_1,books,12.5\n\"item_2\",\"garden, tools\",40\n",
        );
        let (_e, json) = table(
            "items.jsonl",
            "{\"item_id\":\"item_1\",\"category\":\"books\",\"list_price\":12.5}\n\n{\"item_id\":\"item_2\",\"category\":\"garden, tools\",\"list_price\":40}\n",
        );
        for config in [csv, json] {
            let t = Table::load(&config).unwrap();
            let (cat, price) = (
                t.column_map(t.column("category").unwrap()),
                t.column_map(t.column("list_price").unwrap()),
            );
            assert_eq!(cat.get("item_1"), Some(&Cell::Text("books".into())));
            assert_eq!(cat.get("item_2"), Some(&Cell::Text("garden, tools".into())));
            assert_eq!(price.get("item_2"), Some(&Cell::Number(40.0)));
            assert_eq!(cat.get("item_3"), None);
            assert_eq!(t.len(), 2);
        }
    }

    #[test]
    fn a_bad_table_is_an_error_naming_the_file_and_line() {
        let (_d, c) = table(
            "items.csv",
            "item_id,category\nitem_1,books\nitem_1,garden\n",
        );
        let err = Table::load(&c).unwrap_err().to_string();
        assert!(
            err.contains("items.csv:3") && err.contains("has a row already"),
            "{err}"
        );
        let (_d, c) = table("items.csv", "id,category\nitem_1,books\n");
        let err = Table::load(&c).unwrap_err().to_string();
        assert!(
            err.contains("no column \"item_id\"") && err.contains("id, category"),
            "{err}"
        );
        let (_d, c) = table("items.jsonl", "{\"item_id\":\"a\"}\nnot json\n");
        let err = Table::load(&c).unwrap_err().to_string();
        assert!(err.contains("items.jsonl:2"), "{err}");
        let rows: String = (0..11).map(|i| format!("item_{i},x\n")).collect();
        let (_d, c) = table("items.csv", &format!("item_id,category\n{rows}"));
        let err = Table::load(&c).unwrap_err().to_string();
        assert!(err.contains("more than max_rows = 10"), "{err}");
        let (_d, c) = table("items.csv", "item_id,category\nitem_1,books,extra\n");
        assert!(Table::load(&c)
            .unwrap_err()
            .to_string()
            .contains("items.csv:2"));
    }
}
