//! The analytics reducers and selectors against their plain counterparts on the same records:
//! what a quantile or a histogram costs per record beside an average of the same field, a
//! lookup selector beside the plain field it looks up, and how far a quantile past its exact
//! values is from the exact quantile.

use super::{compare, figure, scratch_path, BenchOptions, Figure};
use crate::aggregate::{Aggregator, DeriveConfig, MetricConfig, MetricSet, QUANTILE_ACCURACY};
use crate::config::Pipeline;
use crate::event::{FieldType, Record, Schema, Value};
use crate::generator::{Generator, GeneratorScript};
use crate::telemetry::Stats;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The quantiles whose accuracy is measured.
const MEASURED: [f64; 5] = [0.5, 0.9, 0.95, 0.99, 0.999];

pub(super) fn analytics_section(
    pipeline: &Pipeline,
    script: &GeneratorScript,
    opts: &BenchOptions,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let (n, runs) = (opts.events as usize, opts.runs);
    tracing::info!(events = n, runs, "bench: analytics reducers");
    let schema = pipeline.schema();
    let mut events = Vec::with_capacity(n);
    Generator::new(script.clone(), Some(3)).fill(n, &mut events);
    let Some((field, values)) = busiest_number(pipeline, &events) else {
        tracing::info!("bench: no numeric field in the generated records, so no analytics lines");
        return Ok(());
    };
    let selector = scratch_path(".rhai");
    std::fs::write(&selector, format!("#{{ value: field({field:?}) }}"))?;
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    // Eight buckets evenly over the values' range.
    let bounds: Vec<String> = (1..8)
        .map(|i| format!("{}", lo + (hi - lo) * i as f64 / 8.0))
        .collect();
    let quantiles = format!("{MEASURED:?}");
    let metric = |reducer: &str, extra: &str| -> anyhow::Result<Arc<MetricSet>> {
        let text = format!("name = \"bench_{reducer}\"\nscript = {selector:?}\nreducer = \"{reducer}\"\nwindow = \"60s\"\nslide = \"5s\"\n{extra}");
        let config: MetricConfig = toml::from_str(&text)?;
        Ok(Arc::new(MetricSet::load(&[config], &[], &schema)?))
    };
    let sets = [
        (
            format!("analytics: avg of {field}, apply"),
            metric("avg", ""),
        ),
        (
            format!("analytics: quantile of {field} (5 quantiles), apply"),
            metric("quantile", &format!("quantiles = {quantiles}")),
        ),
        (
            format!("analytics: histogram of {field} (8 buckets), apply"),
            metric("histogram", &format!("buckets = [{}]", bounds.join(", "))),
        ),
    ];
    let _ = std::fs::remove_file(&selector);
    let apply_ns = |set: &Arc<MetricSet>| apply_ns_of(runs)(set, &events);
    let baseline = sets[0].0.clone();
    for (name, set) in &sets {
        let set = match set {
            Ok(set) => set,
            Err(e) => anyhow::bail!("bench: {name}: {e:#}"),
        };
        figures.push(figure(name, "ns/event", apply_ns(set)));
        if *name != baseline {
            compare(figures, name, &baseline);
        }
    }
    // A lookup keyed by a field the records carry: counted per lookup column, and per the field.
    let keyed = pipeline
        .config
        .lookups
        .iter()
        .find(|l| schema.slot(&l.key).is_some());
    if let Some(l) = keyed {
        let table = crate::aggregate::lookup::Table::load(l, &Default::default())?;
        if let Some(column) = table.columns().iter().find(|c| **c != l.key) {
            let mut lines = Vec::new();
            for (what, selector) in [
                (
                    format!("analytics: count by field({:?}), apply", l.key),
                    format!("field({:?})", l.key),
                ),
                (
                    format!(
                        "analytics: count by lookup({:?}, {:?}, {column:?}), apply",
                        l.name, l.key
                    ),
                    format!("lookup({:?}, {:?}, {column:?})", l.name, l.key),
                ),
            ] {
                let script = scratch_path(".rhai");
                std::fs::write(&script, format!("#{{ key: {selector} }}"))?;
                let text = format!("name = \"bench_lookup\"\nscript = {script:?}\nreducer = \"count\"\nwindow = \"60s\"\nslide = \"5s\"\n");
                let config: MetricConfig = toml::from_str(&text)?;
                let set = MetricSet::load(&[config], std::slice::from_ref(l), &schema);
                let _ = std::fs::remove_file(&script);
                figures.push(figure(&what, "ns/event", apply_ns(&Arc::new(set?))));
                lines.push(what);
            }
            compare(figures, &lines[1], &lines[0]);
        }
    }
    sessions_lines(pipeline, &events, &apply_ns_of(runs), figures)?;
    derive_lines(pipeline, &events, &field, (lo + hi) / 2.0, runs, figures)?;
    if let Ok(set) = &sets[1].1 {
        let worst = worst_quantile_error(set, &events, &values)?;
        figures.push(figure(
            &format!(
                "analytics: quantile worst relative error against exact, p50 to p99.9 of {} values (bound {}%)",
                values.len(),
                QUANTILE_ACCURACY * 100.0
            ),
            "%",
            vec![worst * 100.0],
        ));
    }
    Ok(())
}

/// Measures nanoseconds per record of applying records to a metric set, once per run.
type ApplyNs<'a> = &'a dyn Fn(&Arc<MetricSet>, &[Record]) -> Vec<f64>;

/// Nanoseconds per record of applying `events` to a fresh aggregator of a set, in batches of
/// 2,000, once per run.
fn apply_ns_of(runs: usize) -> impl Fn(&Arc<MetricSet>, &[Record]) -> Vec<f64> {
    move |set, events| {
        (0..runs)
            .map(|_| {
                let mut agg = Aggregator::new(set.clone(), Stats::new());
                let took: Duration = events
                    .chunks(2000)
                    .map(|chunk| {
                        let t = Instant::now();
                        agg.apply(chunk, &[]);
                        t.elapsed()
                    })
                    .sum();
                took.as_nanos() as f64 / events.len().max(1) as f64
            })
            .collect()
    }
}

/// A session metric against a sliding count of the same records: the sessions of the
/// pipeline's first session metric's key (else of the Kafka key), counted as they end. The
/// records are restamped 1 ms apart in their generated order (the generator stamps a filled
/// batch with one time), so with the metric's gap sessions end during the run.
fn sessions_lines(
    pipeline: &Pipeline,
    events: &[Record],
    apply_ns: ApplyNs<'_>,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let schema = pipeline.schema();
    let shipped = pipeline.config.metrics.iter().find(|m| m.session.is_some());
    let (script, gap) = match (shipped, &pipeline.config.event.key) {
        (Some(m), _) => (
            std::fs::read_to_string(&m.script)?,
            m.session
                .as_ref()
                .map_or(Duration::from_secs(30), |s| s.gap),
        ),
        (None, Some(key)) => (
            format!("#{{ key: field({key:?}) }}"),
            Duration::from_secs(30),
        ),
        (None, None) => {
            tracing::info!("bench: no session metric and no Kafka key, so no session line");
            return Ok(());
        }
    };
    let mut stamped = events.to_vec();
    let start = chrono::Utc::now().timestamp_millis() - stamped.len() as i64;
    for (i, e) in stamped.iter_mut().enumerate() {
        e.set_time_ms(start + i as i64);
    }
    let path = scratch_path(".rhai");
    std::fs::write(&path, script)?;
    let set = |session: &str| -> anyhow::Result<Arc<MetricSet>> {
        let text = format!("name = \"bench_sessions\"\nscript = {path:?}\nreducer = \"count\"\nwindow = \"60s\"\nslide = \"5s\"\n{session}");
        let config: MetricConfig = toml::from_str(&text)?;
        Ok(Arc::new(MetricSet::load(&[config], &[], &schema)?))
    };
    let plain = set("");
    let sessions = set(&format!("session = {{ gap = \"{}ms\" }}", gap.as_millis()));
    let _ = std::fs::remove_file(&path);
    let (plain, sessions) = (plain?, sessions?);
    let base = "analytics: count (sliding), apply".to_string();
    let line = format!(
        "analytics: sessions counted as they end (gap {}), apply",
        humantime::format_duration(gap)
    );
    figures.push(figure(&base, "ns/event", apply_ns(&plain, &stamped)));
    figures.push(figure(&line, "ns/event", apply_ns(&sessions, &stamped)));
    compare(figures, &line, &base);
    Ok(())
}

/// Three metrics grouping by one function of the record: each calling it (a script call per
/// record and metric), against a `[[derive]]` that calls it once per record and three metrics
/// grouping by the derived field (derivation included in the time).
fn derive_lines(
    pipeline: &Pipeline,
    events: &[Record],
    field: &str,
    middle: f64,
    runs: usize,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    const METRICS: usize = 3;
    let function = format!("fn half(e) {{ let v = e.{field}; if v == () {{ () }} else if v < {middle:?} {{ \"low\" }} else {{ \"high\" }} }}");
    let called = scratch_path(".rhai");
    std::fs::write(&called, format!("{function}\n#{{ key: Fn(\"half\") }}"))?;
    let derivation = scratch_path(".rhai");
    std::fs::write(&derivation, format!("{function}\nFn(\"half\")"))?;
    let read = scratch_path(".rhai");
    std::fs::write(&read, "#{ key: field(\"bench_half\") }")?;
    let metrics = |script: &std::path::Path| -> anyhow::Result<Vec<MetricConfig>> {
        (0..METRICS)
            .map(|i| {
                let text = format!("name = \"bench_{i}\"\nscript = {script:?}\nreducer = \"count\"\nwindow = \"60s\"\nslide = \"5s\"\n");
                Ok(toml::from_str(&text)?)
            })
            .collect()
    };
    let derive: DeriveConfig = toml::from_str(&format!(
        "name = \"bench_half\"\ntype = \"string\"\nscript = {derivation:?}\n"
    ))?;
    let schema = Arc::new(
        Schema::clone(&pipeline.schema())
            .with_derived(&[derive.field()])
            .map_err(|p| anyhow::anyhow!(p.join("; ")))?,
    );
    let each = metrics(&called).and_then(|m| Ok(MetricSet::load(&m, &[], &schema)?));
    let once = metrics(&read).and_then(|m| {
        MetricSet::load_all(
            &m,
            (&[], &Default::default()),
            std::slice::from_ref(&derive),
            &schema,
        )
        .map_err(|mut e| anyhow::Error::from(e.remove(0)))
    });
    for f in [&called, &derivation, &read] {
        let _ = std::fs::remove_file(f);
    }
    let (each, once) = (Arc::new(each?), Arc::new(once?));
    // The records again, with the derived field's slot.
    let mut records = events
        .iter()
        .map(|e| Record::from_json(&schema, e.to_json().as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bench: a generated record does not decode: {}", e.message))?;
    let base =
        format!("analytics: {METRICS} metrics grouping by a script function of {field}, apply");
    let line = format!("analytics: the function as one [[derive]] and {METRICS} metrics grouping by its field, derive + apply");
    figures.push(figure(
        &base,
        "ns/event",
        apply_ns_of(runs)(&each, &records),
    ));
    let mut ns = Vec::new();
    for _ in 0..runs {
        let stats = Stats::new();
        let mut agg = Aggregator::new(once.clone(), stats.clone());
        let t = Instant::now();
        for chunk in records.chunks_mut(2000) {
            once.derive(chunk, &stats);
            agg.apply(chunk, &[]);
        }
        ns.push(t.elapsed().as_nanos() as f64 / records.len().max(1) as f64);
    }
    figures.push(figure(&line, "ns/event", ns));
    compare(figures, &line, &base);
    Ok(())
}

/// The numeric field the most generated records carry, and its values.
fn busiest_number(pipeline: &Pipeline, events: &[Record]) -> Option<(String, Vec<f64>)> {
    let schema = pipeline.schema();
    schema
        .fields()
        .iter()
        .filter(|f| matches!(f.spec.ty, FieldType::Float | FieldType::Int))
        .map(|f| {
            let slot = schema.slot(&f.name).expect("a declared field has a slot");
            let values: Vec<f64> = events
                .iter()
                .filter_map(|e| match e.get(slot) {
                    Value::Float(v) => Some(*v),
                    Value::Int(v) => Some(*v as f64),
                    _ => None,
                })
                .collect();
            (f.name.clone(), values)
        })
        .max_by_key(|(_, values)| values.len())
        .filter(|(_, values)| !values.is_empty())
}

/// One partial of every record (no windows), its quantiles against the exact nearest-rank
/// quantiles of the same values: the largest relative error.
fn worst_quantile_error(set: &MetricSet, events: &[Record], values: &[f64]) -> anyhow::Result<f64> {
    let metric = &set.metrics()[0];
    let mut partial = metric.empty().map_err(anyhow::Error::msg)?;
    for e in events {
        metric
            .add(&mut partial, e, None)
            .map_err(anyhow::Error::msg)?;
    }
    let report = metric.report(&partial).map_err(anyhow::Error::msg)?;
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut worst: f64 = 0.0;
    for q in MEASURED {
        let exact = sorted[crate::aggregate::nearest_rank(q, sorted.len())];
        let label = crate::aggregate::quantile_label(q);
        let got = report[&label].as_f64().ok_or_else(|| {
            anyhow::anyhow!("bench: the quantile metric reported no {label}: {report}")
        })?;
        if exact != 0.0 {
            worst = worst.max((got - exact).abs() / exact.abs());
        }
    }
    Ok(worst)
}
