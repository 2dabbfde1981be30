//! Property tests of the write side: random streams against a straightforward recomputation,
//! with interleaved partitions, batches cut anywhere, and crashes that replay from an earlier
//! commit with the aggregator's memory lost.

use super::reducer::{Input, ReducerKind, Report, State};
use super::write::tests::{event, per_item_set};
use super::{read, Aggregator, Measure, MetricConfig, MetricSet, SessionConfig};
use crate::event::{Record, Value};
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};
use crate::store::StateStore;
use crate::telemetry::Stats;
use crate::transport::Batch;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Events interleaved at random across partitions, each partition in offset order.
type Stream = Vec<(Record, (i32, i64))>;

fn interleave(partitions: &[Vec<(u8, i64)>], seed: u64) -> Stream {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut next = vec![0usize; partitions.len()];
    let amount_slot = super::write::tests::schema().slot("amount").unwrap();
    let mut stream = Vec::new();
    while let Some(p) = {
        let open: Vec<usize> = (0..partitions.len())
            .filter(|&p| next[p] < partitions[p].len())
            .collect();
        (!open.is_empty()).then(|| open[rng.random_range(0..open.len())])
    } {
        let (item, second) = partitions[p][next[p]];
        let mut e = event(
            &format!("p{p}-{}", next[p]),
            &format!("item_{item}"),
            second,
        );
        // An amount of either sign, spread enough that a quantile's buckets differ.
        let amount = ((second * 7919 + next[p] as i64 * 104_729 + p as i64 * 31) % 5_000) as f64
            / 10.0
            - 100.0;
        e.set(amount_slot, Value::Float(amount));
        stream.push((e, (p as i32, next[p] as i64)));
        next[p] += 1;
    }
    stream
}

/// Consumes `stream` in batches cut by `cuts`, writing the partials every `every` batches (a
/// checkpoint, as a consumer behind does); after a batch its commit is sometimes lost with the
/// process (`crashes[i] == 0`: memory gone, replay from the last commit; at most once between
/// two commits), and a commit happens only with a checkpoint.
async fn consume_with_crashes(
    set: &Arc<MetricSet>,
    store: &EmbeddedStore,
    stream: &Stream,
    cuts: &[usize],
    crashes: &[u8],
    every: usize,
) {
    // Session tables are stored only by a whole checkpoint, as when the consumer's
    // session_state_interval has not passed.
    let fresh = || {
        Aggregator::new(set.clone(), Stats::new())
            .with_session_tables_every(Duration::from_secs(3600))
    };
    let mut agg = fresh();
    let (mut pos, mut committed, mut batch_no, mut crashed) = (0usize, 0usize, 0usize, false);
    while pos < stream.len() {
        let n = cuts[batch_no % cuts.len()].min(stream.len() - pos);
        let batch = &stream[pos..pos + n];
        let batch = Batch {
            events: batch.iter().map(|b| b.0.clone()).collect(),
            sources: batch.iter().map(|b| b.1).collect(),
            ..Batch::default()
        };
        let loaded = agg.load(&batch, store).await.unwrap();
        agg.ingest(&batch, loaded).unwrap();
        pos += n;
        let checkpoint = (batch_no + 1) % every == 0 || pos == stream.len();
        // Every other checkpoint leaves the session tables for later: its partials are
        // stored, but nothing may be committed.
        let mut complete = checkpoint;
        if checkpoint && (batch_no / every).is_multiple_of(2) {
            store.write_panes(&agg.checkpoint()).await.unwrap();
        } else if checkpoint {
            let (panes, all) = agg.checkpoint_due();
            store.write_panes(&panes).await.unwrap();
            complete = all;
        }
        // At most one crash between two commits: crashes that kept landing on every checkpoint
        // batch (the patterns repeat) never let the stream end, and hung the test.
        match crashes[batch_no % crashes.len()] {
            0 if !crashed => {
                agg = fresh();
                pos = committed;
                crashed = true;
            }
            _ if complete => {
                committed = pos;
                crashed = false;
            }
            _ => {}
        }
        batch_no += 1;
    }
}

/// The records per item of a window in a single, crash-free pass: per partition in offset
/// order, an event more than `lateness_s` behind the newest before it is left out.
fn recomputed(
    stream: &Stream,
    lateness_s: i64,
    window: (i64, i64),
) -> BTreeMap<String, Vec<Record>> {
    let mut newest: BTreeMap<i32, i64> = BTreeMap::new();
    let mut expected = BTreeMap::new();
    let mut in_order = stream.clone();
    in_order.sort_by_key(|(_, (p, o))| (*p, *o));
    for (e, (p, _)) in &in_order {
        let t = e.time_ms();
        let mark = newest.entry(*p).or_insert(i64::MIN);
        if *mark != i64::MIN && t < *mark - lateness_s * 1000 {
            continue;
        }
        *mark = (*mark).max(t);
        if (window.0..window.1).contains(&t) {
            expected
                .entry(
                    e.field("item_id")
                        .and_then(|v| v.as_text())
                        .unwrap()
                        .into_owned(),
                )
                .or_insert_with(Vec::new)
                .push(e.clone());
        }
    }
    expected
}

/// What a metric should report for the window `[start, end)` of a stream.
type Expected<'a> = &'a dyn Fn(&Stream, (i64, i64)) -> serde_json::Value;

fn counts(per_item: &BTreeMap<String, Vec<Record>>) -> serde_json::Value {
    serde_json::json!(per_item
        .iter()
        .map(|(item, records)| (item.clone(), records.len()))
        .collect::<BTreeMap<_, _>>())
}

/// How a random stream is consumed: its events per partition (item, second), how batches are
/// cut, when the process crashes, how many batches between checkpoints, and the interleaving.
#[derive(Debug, Clone)]
struct Consumption {
    partitions: Vec<Vec<(u8, i64)>>,
    cuts: Vec<usize>,
    crashes: Vec<u8>,
    every: usize,
    seed: u64,
}

prop_compose! {
    fn consumption()(
        partitions in prop::collection::vec(prop::collection::vec((0u8..4, 0i64..90), 0..40), 3),
        cuts in prop::collection::vec(1usize..12, 1..20),
        crashes in prop::collection::vec(0u8..4, 20),
        every in 1usize..5,
        seed in any::<u64>(),
    ) -> Consumption {
        Consumption { partitions, cuts, crashes, every, seed }
    }
}

fn check_windows(
    set: &Arc<MetricSet>,
    expected: Expected,
    c: &Consumption,
) -> Result<(), TestCaseError> {
    let (cuts, crashes, every) = (&c.cuts, &c.crashes, c.every);
    let stream = interleave(&c.partitions, c.seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        &EmbeddedConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
        &Default::default(),
        &super::write::tests::schema(),
        &[],
    )
    .unwrap();
    rt.block_on(async {
        consume_with_crashes(set, &store, &stream, cuts, crashes, every).await;
        let metric = &set.metrics()[0];
        for at in (0..130).step_by(5) {
            let v = read(metric, &store, (1_000_000 + at) * 1000).await.unwrap();
            prop_assert_eq!(
                &v.value,
                &expected(&stream, (v.window_start, v.window_end)),
                "window ending {}",
                v.window_end
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    /// With a long lateness nothing is late; with a short one many events are, and a crash must
    /// not let a replay count one that was judged late before it (the watermark is stored).
    /// Partials written every batch or every few (a backlog's checkpoints) give the same.
    #[test]
    fn replays_crashes_and_lateness_give_the_recomputed_counts(
        c in consumption(),
        lateness_s in prop_oneof![Just(10i64), Just(3600i64)],
    ) {
        let set = per_item_set(Duration::from_secs(20), Duration::from_secs(lateness_s as u64));
        check_windows(&set, &|s, w| counts(&recomputed(s, lateness_s, w)), &c)?;
    }

    /// A quantile's state merged from partials of any cut, replayed after crashes, is the state
    /// of one pass over the window's records: the reported quantiles are equal, not close.
    /// `exact_limit = 4` makes most states buckets.
    #[test]
    fn quantile_states_merge_to_one_pass_under_replays_and_crashes(c in consumption()) {
        check_windows(&quantile_set(), &|s, w| quantiles_of(&recomputed(s, 3600, w)), &c)?;
    }

    /// Session metrics (sessions closed per window, and their records) replayed after crashes,
    /// with their tables of open sessions stored less often than their partials, report what
    /// one pass of the session rules gives: sessions by gap, cut at max_length, the one due
    /// first closed early past max_open, late records left out, each session in the window of
    /// its closing time.
    #[test]
    fn session_states_merge_to_one_pass_under_replays_and_crashes(c in consumption()) {
        for (measure, reducer) in [(Measure::Sessions, ReducerKind::Count), (Measure::Events, ReducerKind::Sum)] {
            let set = session_set(measure, reducer);
            check_windows(&set, &|s, w| {
                let closed = sessions_recomputed(s).into_iter().filter(|c| (w.0..w.1).contains(&c.0));
                match measure {
                    Measure::Events => serde_json::json!(closed.map(|c| c.2 as f64).sum::<f64>()),
                    _ => serde_json::json!(closed.count()),
                }
            }, &c)?;
        }
    }
}

/// The session rules of [`session_set`]: gap, max_length, lateness (ms), most open sessions.
const SESSIONS: (i64, i64, i64, usize) = (4_000, 20_000, 10_000, 3);

/// Sessions of `item_id` (gap 4 s, cut at 20 s, at most 3 open per partition, lateness 10 s),
/// reduced by `reducer` over `measure`.
fn session_set(measure: Measure, reducer: ReducerKind) -> Arc<MetricSet> {
    let per_item = per_item_set(Duration::from_secs(20), Duration::from_secs(10));
    let (gap, max_length, _, max_open) = SESSIONS;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sessions.rhai");
    std::fs::write(&script, "#{ key: field(\"item_id\") }").unwrap();
    let config = MetricConfig {
        name: "sessions".into(),
        script,
        reducer,
        max_groups: max_open,
        session: Some(SessionConfig {
            gap: Duration::from_millis(gap as u64),
            max_length: Duration::from_millis(max_length as u64),
            measure,
        }),
        ..per_item.metrics()[0].config.clone()
    };
    Arc::new(MetricSet::load(&[config], &[], &super::write::tests::schema()).unwrap())
}

/// The sessions of [`session_set`] in a single, crash-free pass, written from the rules, not
/// from the runner's table: (closing time, duration ms, records) of each closed one.
fn sessions_recomputed(stream: &Stream) -> Vec<(i64, i64, u64)> {
    struct Open {
        start: i64,
        opened: i64,
        last: i64,
        n: u64,
    }
    let (gap, max_length, lateness, max_open) = SESSIONS;
    let deadline = |s: &Open| (s.last + gap).min(s.opened + max_length);
    let mut in_order = stream.clone();
    in_order.sort_by_key(|(_, (p, o))| (*p, *o));
    let mut partitions: BTreeMap<i32, (i64, BTreeMap<String, Open>)> = BTreeMap::new();
    let mut out = Vec::new();
    for (e, (p, _)) in &in_order {
        let (wm, open) = partitions
            .entry(*p)
            .or_insert_with(|| (i64::MIN, BTreeMap::new()));
        let t = e.time_ms();
        if *wm != i64::MIN && t < *wm - lateness {
            continue;
        }
        *wm = (*wm).max(t);
        let limit = *wm - lateness;
        let key = e
            .field("item_id")
            .and_then(|v| v.as_text())
            .unwrap()
            .into_owned();
        let new = Open {
            start: t,
            opened: t,
            last: t,
            n: 1,
        };
        match open.get_mut(&key) {
            Some(s) if t < s.last + gap && t < s.opened + max_length => {
                s.start = s.start.min(t);
                s.last = s.last.max(t);
                s.n += 1;
            }
            Some(s) => {
                out.push((deadline(s).max(limit), s.last - s.start, s.n));
                *s = new;
            }
            None => {
                open.insert(key, new);
            }
        }
        loop {
            let first = open.iter().map(|(k, s)| (deadline(s), k.clone())).min();
            match first {
                Some((d, k)) if d <= limit || open.len() > max_open => {
                    let s = open.remove(&k).unwrap();
                    out.push((d.max(limit), s.last - s.start, s.n));
                }
                _ => break,
            }
        }
    }
    out
}

const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// p50 / p95 / p99 of `amount` per item, exact for four values, buckets past them.
fn quantile_set() -> Arc<MetricSet> {
    let per_item = per_item_set(Duration::from_secs(20), Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("amounts.rhai");
    std::fs::write(
        &script,
        "#{ key: field(\"item_id\"), value: field(\"amount\") }",
    )
    .unwrap();
    let config = MetricConfig {
        name: "amounts".into(),
        script,
        reducer: ReducerKind::Quantile,
        quantiles: QUANTILES.to_vec(),
        exact_limit: 4,
        ..per_item.metrics()[0].config.clone()
    };
    Arc::new(MetricSet::load(&[config], &[], &super::write::tests::schema()).unwrap())
}

fn quantiles_of(per_item: &BTreeMap<String, Vec<Record>>) -> serde_json::Value {
    let mut one_pass = State::new(ReducerKind::Quantile, true);
    for (item, records) in per_item {
        for r in records {
            let amount = r.field("amount").and_then(|v| v.as_f64()).unwrap();
            one_pass.add(ReducerKind::Quantile, Some(item), Input::Number(amount), 4);
        }
    }
    one_pass.report(&Report::of(ReducerKind::Quantile).with_quantiles(&QUANTILES))
}
