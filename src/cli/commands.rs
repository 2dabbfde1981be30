//! The subcommands behind the CLI, as library functions so tests can call them directly.
//! (`runner validate` is [`crate::pipeline::validate`], the compile step `run` uses.)

use crate::aggregate::MetricValue;
use crate::config::Pipeline;
use crate::generator::{Generator, GeneratorScript};
use anyhow::Context;
use std::io::Write;
use std::sync::Arc;

/// Writes `count` generated events to `out` (no transport involved): JSON lines for people, or
/// with `raw` in the pipeline's `[event] format` as a file source reads it (JSON lines, or Avro
/// and Protobuf records each after its length, [`crate::codec::write_delimited`]). Timed as if
/// sent from now at the pipeline's rate, with its profile and scenarios, on a simulated clock
/// (so session think times and scenarios show in the times without waiting for them).
pub fn generate(
    pipeline: &Pipeline,
    count: u64,
    raw: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let config = &pipeline.config.generator;
    let script = GeneratorScript::load(config, &pipeline.schema())?;
    let mut generator = Generator::new(script, config.seed);
    let codec = match raw {
        true => crate::pipeline::codec(&pipeline.config)?,
        false => crate::codec::Codec::json(pipeline.schema(), usize::MAX),
    };
    let mut payload = Vec::new();
    let mut bursts = crate::generator::traffic::Bursts::new(config.seed);
    let started_ms = chrono::Utc::now().timestamp_millis();
    let mut elapsed = std::time::Duration::ZERO;
    let mut batch = Vec::with_capacity(1000);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut left = count;
    while left > 0 {
        let now = generator.traffic().at(started_ms, elapsed, &mut bursts);
        let Some(rate) = now.rate(config.rate) else {
            elapsed += std::time::Duration::from_millis(100);
            continue;
        };
        let n = (crate::generator::rate::batch_for(rate, 1000) as u64).min(left) as usize;
        batch.clear();
        let tick = crate::generator::Tick {
            now_ms: started_ms + elapsed.as_millis() as i64,
            rate,
            effects: &now.effects,
        };
        generator.fill_at(n, &tick, &mut batch);
        if rate > 0.0 {
            elapsed += std::time::Duration::from_secs_f64(n as f64 / rate);
        }
        buf.clear();
        for e in &batch {
            payload.clear();
            codec.encode(e, &mut payload).map_err(|why| {
                anyhow::anyhow!(
                    "generated event {:?} does not fit [event] schema: {why}",
                    e.id()
                )
            })?;
            crate::codec::write_delimited(codec.format(), &payload, &mut buf);
        }
        out.write_all(&buf)?;
        left -= batch.len() as u64;
    }
    out.flush()?;
    Ok(())
}

/// The pipeline's store, and its metrics compiled with the lookup collections read from it.
async fn open_with_metrics(
    pipeline: &Pipeline,
) -> anyhow::Result<(crate::store::Opened, crate::aggregate::MetricSet)> {
    let opened = crate::pipeline::open_store(&pipeline.config).await?;
    let fetched =
        crate::pipeline::fetch_collections(&pipeline.config, &*opened.collections).await?;
    let set = pipeline.metric_set(&fetched).map_err(|mut e| e.remove(0))?;
    Ok((opened, set))
}

/// Reads every metric's current window from the pipeline's store.
pub async fn metrics(pipeline: &Pipeline, at_ms: i64) -> anyhow::Result<Vec<MetricValue>> {
    let (opened, set) = open_with_metrics(pipeline).await?;
    set.read_all(&*opened.store, at_ms).await
}

/// Every metric's final result for the window that ends with the pane holding `at_ms`, read from
/// the results the consumers wrote when the window closed; with it, the names of the metrics
/// whose window has no result yet (not closed, or from before results were kept), which are
/// computed from the stored partials instead.
pub async fn metrics_at(
    pipeline: &Pipeline,
    at_ms: i64,
) -> anyhow::Result<(Vec<MetricValue>, Vec<String>)> {
    let (opened, set) = open_with_metrics(pipeline).await?;
    let store = opened.store;
    let (mut values, mut not_final) = (Vec::new(), Vec::new());
    for m in set.metrics() {
        let (_, end) = m.window.range_at(at_ms);
        match store.load_results(m.name(), end, end + 1).await?.pop() {
            Some(r) => values.push(MetricValue {
                name: r.metric,
                description: m.config.description.clone(),
                window_start: r.window_start,
                window_end: r.window_end,
                value: r.value,
                backfilling: None,
                other: None,
                filled: true,
            }),
            None => {
                not_final.push(m.name().to_string());
                values.push(crate::aggregate::read(m, &*store, at_ms).await?);
            }
        }
    }
    Ok((values, not_final))
}

/// Prints metric values as an aligned table.
/// The time `runner metrics --at` names: an RFC 3339 time (`2026-12-02T10:15:00Z`) or how long
/// before `now_ms` (`10m`), in milliseconds.
pub fn parse_at(at: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) {
        return Ok(t.timestamp_millis());
    }
    let ago = humantime::parse_duration(at).map_err(|_| {
        anyhow::anyhow!(
            "--at {at:?}: not an RFC 3339 time (2026-12-02T10:15:00Z) nor a duration ago (10m)"
        )
    })?;
    Ok(now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)))
}

/// Numbers are rounded for reading ([`readable_json`]); `--json` prints them in full.
pub fn print_metrics(values: &[MetricValue], out: &mut dyn Write) -> std::io::Result<()> {
    use crate::base::readable_json;
    let width = values
        .iter()
        .map(|v| v.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    writeln!(out, "{:width$}  {:<21}  value", "metric", "window (UTC)")?;
    for v in values {
        let start = chrono::DateTime::from_timestamp_millis(v.window_start)
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_default();
        let end = chrono::DateTime::from_timestamp_millis(v.window_end)
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_default();
        match v.backfilling {
            // A partial value is not shown as if it were the window's.
            Some(b) => writeln!(
                out,
                "{:width$}  {start}-{end}      backfilling ({:.0}% done; partial: {})",
                v.name,
                100.0 * b.done,
                readable_json(&v.value)
            )?,
            None => writeln!(
                out,
                "{:width$}  {start}-{end}      {}",
                v.name,
                readable_json(&v.value)
            )?,
        }
    }
    Ok(())
}

/// `runner backfill`: recomputes one metric's panes over `[now - since, until)` from the
/// pipeline's history (the Kafka log, or the embedded store's raw rows), replacing the stored
/// partials, and rewrites the final results of the windows it touched. `until` defaults to the
/// newest pane live traffic can no longer change (the metric's lateness plus one slide ago).
pub async fn backfill(
    pipeline: &Pipeline,
    metric: &str,
    since: std::time::Duration,
    until: Option<std::time::Duration>,
) -> anyhow::Result<crate::aggregate::recompute::Recomputed> {
    let config = &pipeline.config;
    let (opened, set) = open_with_metrics(pipeline).await?;
    let index = set
        .metrics()
        .iter()
        .position(|m| m.name() == metric)
        .ok_or_else(|| {
            let names: Vec<&str> = set.metrics().iter().map(|m| m.name()).collect();
            anyhow::anyhow!(
                "{}: no metric {metric:?} (its metrics: {})",
                pipeline.path.display(),
                names.join(", ")
            )
        })?;
    let m = &set.metrics()[index];
    let history = crate::pipeline::history(config, &opened).map_err(anyhow::Error::msg)?;
    let store = opened.store;
    let partitions = crate::pipeline::partitions(config).await?;
    anyhow::ensure!(
        !partitions.is_empty(),
        "Kafka topic {:?} does not exist: there is no history to read",
        config.kafka.topic
    );
    let now = chrono::Utc::now().timestamp_millis();
    let slide = m.window.slide_ms;
    let until_ms = match until {
        Some(ago) => now - ago.as_millis() as i64,
        None => now - m.config.lateness.as_millis() as i64 - slide,
    };
    let range = (
        m.window.pane_of(now - since.as_millis() as i64),
        m.window.pane_of(until_ms),
    );
    anyhow::ensure!(range.0 < range.1, "nothing to recompute: --since reaches no pane older than --until (the newest panes are live traffic's; see --until)");
    let at = |t: i64| {
        chrono::DateTime::from_timestamp_millis(t)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    };
    tracing::info!(metric, from = %at(range.0), until = %at(range.1), partitions = partitions.len(), "recomputing from history");
    let screen = config.consumer.validation.screen();
    let last_log = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |events: u64| {
        let mut last = last_log.lock().unwrap();
        if last.elapsed() >= std::time::Duration::from_secs(5) {
            *last = std::time::Instant::now();
            tracing::info!(metric, events, "recomputing");
        }
    };
    crate::aggregate::recompute::recompute(
        &set,
        index,
        &*history,
        &partitions,
        range,
        &*store,
        &screen,
        &progress,
    )
    .await
}

/// `runner try`: the draft metric of the file `draft` (its `[[metric]]` keys, at the top level
/// or as one `[[metric]]` table; `script` relative to that file) run over the last `since` of
/// the pipeline's history into a scratch store, as the workbench's "Try" does; the pipeline's
/// stored state is not touched.
pub async fn try_metric(
    pipeline: &Pipeline,
    draft: &std::path::Path,
    since: std::time::Duration,
) -> anyhow::Result<crate::dashboard::workbench::Tried> {
    let draft = read_draft(draft)?;
    let (opened, set) = open_with_metrics(pipeline).await?;
    let store = crate::store::Switchable::new(opened);
    crate::pipeline::workbench::try_draft(&draft, since, pipeline, &Arc::new(set), &store).await
}

/// A try's result as `runner try` prints it: the problems, or the value now, the windows over
/// the range beside the running metric's, and the samples.
pub fn tried_text(tried: &crate::dashboard::workbench::Tried) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for p in &tried.problems {
        let at = match (p.line, p.column) {
            (Some(l), Some(c)) => format!(":{l}:{c}"),
            (Some(l), None) => format!(":{l}"),
            _ => String::new(),
        };
        let _ = writeln!(out, "{}{at}: {}", p.file, p.message);
    }
    let Some(value) = &tried.value else {
        return out;
    };
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_default()
    };
    let _ = writeln!(
        out,
        "{}: {} records read in {:.1} s{}",
        value.name,
        tried.events,
        tried.seconds,
        match tried.complete {
            true => "",
            false => " (stopped by the time budget: the history was read in part)",
        }
    );
    let _ = writeln!(
        out,
        "value for the window {}-{}: {}",
        time(value.window_start),
        time(value.window_end),
        value.value
    );
    let _ = writeln!(
        out,
        "\n{:<10}  {:<30}  {}",
        "window end",
        "draft",
        match tried.current {
            Some(_) => "running",
            None => "",
        }
    );
    for (i, p) in tried.series.iter().enumerate() {
        let running = tried
            .current
            .as_ref()
            .and_then(|c| c.get(i).filter(|c| c.end == p.end))
            .map(|c| cell(&c.value))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<10}  {:<30}  {running}",
            time(p.end),
            cell(&p.value)
        );
    }
    if !tried.samples.is_empty() {
        let _ = writeln!(out, "\nwhat the script made of the first records:");
        for s in &tried.samples {
            let _ = writeln!(out, "  {}\n    -> {}", s.record, s.gave);
        }
    }
    out
}

/// A value in a column of 30: a long one (a grouped metric's) is cut, `--json` has it whole.
fn cell(v: &serde_json::Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(29) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A draft metric file read into the workbench's draft: its settings, and its script's text
/// (the `script` path made absolute, so errors name the file the user has).
fn read_draft(path: &std::path::Path) -> anyhow::Result<crate::dashboard::workbench::Draft> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the draft {}", path.display()))?;
    let mut doc: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message().trim()))?;
    let table = match doc.remove("metric") {
        Some(toml::Value::Array(mut tables)) if tables.len() == 1 && doc.is_empty() => {
            match tables.remove(0) {
                toml::Value::Table(t) => t,
                _ => anyhow::bail!("{}: [[metric]] is not a table", path.display()),
            }
        }
        Some(_) => anyhow::bail!(
            "{}: give one metric: its keys, or one [[metric]] table and nothing else",
            path.display()
        ),
        None => doc,
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let script = match table.get("script") {
        Some(toml::Value::String(s)) => dir.join(s),
        _ => anyhow::bail!(
            "{}: the metric needs `script`, its Rhai file",
            path.display()
        ),
    };
    let source = std::fs::read_to_string(&script)
        .with_context(|| format!("cannot read the script {}", script.display()))?;
    let serde_json::Value::Object(mut settings) = serde_json::to_value(&table)? else {
        unreachable!("a TOML table is a JSON object")
    };
    settings.insert(
        "script".into(),
        std::path::absolute(&script)
            .unwrap_or(script)
            .display()
            .to_string()
            .into(),
    );
    Ok(crate::dashboard::workbench::Draft {
        settings,
        script: source,
    })
}

/// `runner lookup load`: replaces the documents of lookup `name`'s store collection with the rows
/// of `file` (CSV or JSON lines), checked first as the table loads them (the key column, one row
/// per key, `max_rows`). Returns how many documents it wrote, and where.
pub async fn load_lookup(
    pipeline: &Pipeline,
    name: &str,
    file: &std::path::Path,
) -> anyhow::Result<(usize, String)> {
    use crate::aggregate::lookup::{file_documents, Source, Table};
    let config = &pipeline.config;
    let lookup = config
        .lookups
        .iter()
        .find(|l| l.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.lookups.iter().map(|l| l.name.as_str()).collect();
            anyhow::anyhow!(
                "{}: no [[lookup]] {name:?} (its lookups: {})",
                pipeline.path.display(),
                names.join(", ")
            )
        })?;
    let Source::Collection(collection) = lookup.source() else {
        anyhow::bail!(
            "{}: lookup {name:?} reads a file (`from`); only a lookup with `collection` is kept in the store",
            pipeline.path.display()
        );
    };
    let documents = file_documents(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut fetched = crate::aggregate::Fetched::default();
    fetched.insert(name, documents.clone());
    Table::load(lookup, &fetched)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message))?;
    let opened = crate::pipeline::open_store(config).await?;
    opened
        .collections
        .replace_documents(collection, &documents)
        .await?;
    Ok((
        documents.len(),
        format!("collection {collection:?} of {}", opened.store.describe()),
    ))
}

#[cfg(test)]
mod at_tests {
    use super::parse_at;

    #[test]
    fn at_takes_a_time_or_a_duration_ago_and_names_what_it_cannot_read() {
        assert_eq!(
            parse_at("2026-12-02T10:15:00Z", 0).unwrap(),
            1_796_206_500_000
        );
        assert_eq!(parse_at("10m", 1_000_000).unwrap(), 400_000);
        let err = parse_at("yesterday", 0).unwrap_err().to_string();
        assert!(
            err.contains("--at \"yesterday\"") && err.contains("RFC 3339"),
            "{err}"
        );
    }
}
