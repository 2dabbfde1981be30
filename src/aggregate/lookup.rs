//! Lookup tables (enrichment): `[[lookup]]` loads a CSV or JSON-lines file, or a collection of
//! the pipeline's store, keyed by one of its columns, and a metric script reads a column of the
//! row a record's field names with `lookup("items", "item_id", "category")`, in Rust, once per
//! record and metric (a hash lookup; no script call). The tables are part of the compiled metric
//! set, so a changed file (or a collection read again every `refresh`) is a hot reload like a
//! changed script: checked completely, then swapped in between batches, window state kept.
//!
//! Compiling reads files but never the store: a collection's documents are read before, by the
//! pipeline ([`Fetched`]). Without them (`runner validate`) a collection's table is *unread*:
//! it accepts any column and has no rows, and its columns are checked when the pipeline starts.

use crate::event::Text;
use crate::script::ScriptError;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// `.ndjson`); relative to the pipeline file. Reloaded when it changes. Give this or
    /// `collection`.
    #[serde(default)]
    pub from: Option<PathBuf>,
    /// A collection of the pipeline's store instead of a file: in MongoDB's database, or in the
    /// embedded store (`runner lookup load` fills either from a CSV or JSON-lines file). Read
    /// at start and every `refresh`.
    #[serde(default)]
    pub collection: Option<String>,
    /// How often a `collection` is read again; changed rows apply from the next batch.
    #[serde(
        default = "default_refresh",
        deserialize_with = "crate::base::de::duration"
    )]
    pub refresh: Duration,
    /// The column whose value a record's field is matched with.
    pub key: String,
    /// Rows at most: a larger file is a load error, so a wrong file cannot fill the memory.
    #[serde(
        default = "default_max_rows",
        deserialize_with = "crate::base::de::number"
    )]
    pub max_rows: usize,
}

/// Where a lookup's rows come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source<'a> {
    File(&'a Path),
    Collection(&'a str),
}

impl LookupConfig {
    /// A lookup of the file `from` keyed by column `key`, with the defaults of the rest.
    pub fn of_file(name: &str, from: PathBuf, key: &str) -> LookupConfig {
        LookupConfig {
            name: name.to_string(),
            from: Some(from),
            collection: None,
            refresh: default_refresh(),
            key: key.to_string(),
            max_rows: default_max_rows(),
        }
    }

    /// Its rows' origin (the file check makes sure exactly one is given; see [`Self::problem`]).
    pub fn source(&self) -> Source<'_> {
        match (&self.from, &self.collection) {
            (None, Some(c)) => Source::Collection(c),
            (from, _) => Source::File(from.as_deref().unwrap_or(Path::new(""))),
        }
    }

    /// What is wrong with the choice of source, if anything.
    pub fn problem(&self) -> Option<String> {
        let name = &self.name;
        match (&self.from, &self.collection) {
            (Some(_), Some(_)) => Some(format!(
                "lookup {name:?}: give `from` (a file) or `collection` (in the store), not both"
            )),
            (None, None) => Some(format!(
                "lookup {name:?}: give `from` (a CSV or JSON-lines file) or `collection` (in the store)"
            )),
            (Some(_), None) if self.refresh != default_refresh() => Some(format!(
                "lookup {name:?}: `refresh` is for a collection (a file is read again when it changes)"
            )),
            (None, Some(c)) if c.trim().is_empty() => {
                Some(format!("lookup {name:?}: `collection` is empty"))
            }
            _ => None,
        }
    }

    /// Where its rows are, for messages: the file, or the store's collection.
    fn origin(&self) -> PathBuf {
        match self.source() {
            Source::File(path) => path.to_path_buf(),
            Source::Collection(c) => PathBuf::from(format!("store collection {c:?}")),
        }
    }
}

fn default_refresh() -> Duration {
    Duration::from_secs(60)
}

/// The documents of the collection lookups, by lookup name, read from the store before the
/// compile step; a lookup missing here is compiled unread (see the module's comment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fetched(HashMap<String, Arc<Vec<crate::store::Document>>>);

impl Fetched {
    pub fn insert(&mut self, lookup: &str, documents: Vec<crate::store::Document>) {
        self.0.insert(lookup.to_string(), Arc::new(documents));
    }

    fn get(&self, lookup: &str) -> Option<&[crate::store::Document]> {
        self.0.get(lookup).map(|d| d.as_slice())
    }
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
    /// The bytes its file (or documents, as JSON) held: what the table costs in memory,
    /// roughly, and reported.
    pub bytes: usize,
    /// A collection not read (`runner validate`): any column is accepted, no row is found.
    pub unread: bool,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<usize> {
        match self.unread {
            true => Some(self.columns.len()),
            false => self.columns.iter().position(|c| c == name),
        }
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

    /// Reads the table `config` names, from its file or from `fetched`; the error says which
    /// file and line (or document).
    pub fn load(config: &LookupConfig, fetched: &Fetched) -> Result<Table, ScriptError> {
        let (columns, rows, bytes) = match config.source() {
            Source::File(path) => read_file(path)
                .map_err(|mut e| {
                    e.message = format!("lookup {:?}: {}", config.name, e.message);
                    e
                })?,
            Source::Collection(_) => match fetched.get(&config.name) {
                None => {
                    return Ok(Table {
                        name: config.name.clone(),
                        unread: true,
                        ..Table::default()
                    })
                }
                Some([]) => {
                    return Err(problem(
                        &config.origin(),
                        None,
                        format!(
                            "lookup {:?}: the collection has no documents (fill it with `runner lookup load <pipeline> {} <file>`)",
                            config.name, config.name
                        ),
                    ))
                }
                Some(documents) => {
                    let bytes = documents
                        .iter()
                        .map(|d| serde_json::to_string(d).map_or(0, |t| t.len()))
                        .sum();
                    // A document's place in the read stands for a file's line.
                    let objects = documents.iter().cloned().enumerate().map(|(i, d)| (i + 1, d));
                    let (columns, rows) = objects_to_rows(objects.collect());
                    (columns, rows, bytes)
                }
            },
        };
        let path = &config.origin();
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
            bytes,
            unread: false,
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

/// A table's file: CSV, or JSON lines by its extension; its columns, rows and size.
fn read_file(path: &Path) -> Result<(Vec<String>, Rows, usize), ScriptError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(path, None, format!("cannot read the file: {e}")))?;
    let json = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson" | "json")
    );
    let (columns, rows) = match json {
        true => json_lines(&text, path)?,
        false => csv_rows(&text, path)?,
    };
    Ok((columns, rows, text.len()))
}

/// The rows of a table's file as documents for a store collection (`runner lookup load`): a
/// cell is a number, a string, or left out when empty, as the table reads it.
pub fn file_documents(path: &Path) -> Result<Vec<crate::store::Document>, ScriptError> {
    let (columns, rows, _) = read_file(path)?;
    Ok(rows
        .into_iter()
        .map(|(_, row)| {
            columns
                .iter()
                .zip(row.iter())
                .filter_map(|(c, cell)| {
                    let value = match cell {
                        Cell::Text(t) => serde_json::Value::from(t.as_str()),
                        Cell::Number(n) => serde_json::Number::from_f64(*n)?.into(),
                        Cell::Empty => return None,
                    };
                    Some((c.clone(), value))
                })
                .collect()
        })
        .collect())
}

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
    let mut objects = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| problem(path, Some(i + 1), format!("not a JSON object: {e}")))?;
        objects.push((i + 1, object));
    }
    Ok(objects_to_rows(objects))
}

/// Rows of JSON objects, with the line (or place) each stands at: every key any object has is a
/// column; a missing or null value is an empty cell.
fn objects_to_rows(
    objects: Vec<(usize, serde_json::Map<String, serde_json::Value>)>,
) -> (Vec<String>, Rows) {
    let mut columns: Vec<String> = Vec::new();
    for (_, object) in &objects {
        for k in object.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
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
    (columns, rows)
}

/// The loaded tables of a pipeline, by name.
#[derive(Debug, Default, Clone)]
pub struct Lookups(Vec<Arc<Table>>);

impl Lookups {
    /// Loads every table, the collections' from `fetched`; on failure, every problem.
    pub fn load(configs: &[LookupConfig], fetched: &Fetched) -> Result<Lookups, Vec<ScriptError>> {
        let mut tables = Vec::new();
        let mut problems = Vec::new();
        for c in configs {
            if tables.iter().any(|t: &Arc<Table>| t.name == c.name) {
                problems.push(problem(
                    &c.origin(),
                    None,
                    format!("lookup name {:?} is used twice", c.name),
                ));
                continue;
            }
            match Table::load(c, fetched) {
                Ok(t) if t.unread => tables.push(Arc::new(t)),
                Ok(t) => {
                    tracing::info!(lookup = %c.name, rows = t.len(), bytes = t.bytes, from = %c.origin().display(), "lookup table loaded");
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
            max_rows: 10,
            ..LookupConfig::of_file("items", from, "item_id")
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
            let t = Table::load(&config, &Fetched::default()).unwrap();
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
        let err = Table::load(&c, &Fetched::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("items.csv:3") && err.contains("has a row already"),
            "{err}"
        );
        let (_d, c) = table("items.csv", "id,category\nitem_1,books\n");
        let err = Table::load(&c, &Fetched::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no column \"item_id\"") && err.contains("id, category"),
            "{err}"
        );
        let (_d, c) = table("items.jsonl", "{\"item_id\":\"a\"}\nnot json\n");
        let err = Table::load(&c, &Fetched::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("items.jsonl:2"), "{err}");
        let rows: String = (0..11).map(|i| format!("item_{i},x\n")).collect();
        let (_d, c) = table("items.csv", &format!("item_id,category\n{rows}"));
        let err = Table::load(&c, &Fetched::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than max_rows = 10"), "{err}");
        let (_d, c) = table("items.csv", "item_id,category\nitem_1,books,extra\n");
        assert!(Table::load(&c, &Fetched::default())
            .unwrap_err()
            .to_string()
            .contains("items.csv:2"));
    }

    #[test]
    fn a_collection_loads_as_its_file_would_and_unread_it_accepts_any_column() {
        let (_d, file) = table(
            "items.csv",
            "item_id,category,list_price\nitem_1,books,12.5\nitem_2,,40\n",
        );
        let documents = file_documents(file.from.as_ref().unwrap()).unwrap();
        assert_eq!(
            serde_json::Value::Array(documents.iter().cloned().map(Into::into).collect()),
            serde_json::json!([
                {"item_id": "item_1", "category": "books", "list_price": 12.5},
                {"item_id": "item_2", "list_price": 40.0}
            ]),
            "numbers as numbers, an empty cell left out"
        );
        let collection = LookupConfig {
            from: None,
            collection: Some("items".into()),
            ..file.clone()
        };
        let unread = Table::load(&collection, &Fetched::default()).unwrap();
        assert!(unread.unread && unread.is_empty());
        assert!(unread.column("anything").is_some());
        let mut fetched = Fetched::default();
        fetched.insert("items", documents);
        let (a, b) = (
            Table::load(&file, &Fetched::default()).unwrap(),
            Table::load(&collection, &fetched).unwrap(),
        );
        for column in ["category", "list_price"] {
            assert_eq!(
                a.column_map(a.column(column).unwrap()),
                b.column_map(b.column(column).unwrap()),
                "{column}"
            );
        }
        fetched.insert("items", Vec::new());
        let err = Table::load(&collection, &fetched).unwrap_err().to_string();
        assert!(
            err.contains("store collection \"items\"") && err.contains("runner lookup load"),
            "{err}"
        );
    }

    #[test]
    fn a_lookup_names_one_source() {
        let (_d, file) = table("items.csv", "item_id\n");
        assert_eq!(file.problem(), None);
        let both = LookupConfig {
            collection: Some("items".into()),
            ..file.clone()
        };
        assert!(both.problem().unwrap().contains("not both"));
        let neither = LookupConfig {
            from: None,
            ..file.clone()
        };
        assert!(neither.problem().unwrap().contains("give `from`"));
        let refreshed_file = LookupConfig {
            refresh: Duration::from_secs(5),
            ..file
        };
        assert!(refreshed_file
            .problem()
            .unwrap()
            .contains("`refresh` is for a collection"));
    }
}
