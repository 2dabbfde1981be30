//! Session windows: the records of one key (a session id, a user) form a session while each
//! comes within `gap` of the one before; the session closes once the partition's watermark,
//! less the metric's lateness, passes its last record plus the gap (or its start plus
//! `max_length`, so an endless session is cut). Each closed session is one input of the
//! metric's reducer (a count of sessions, its duration or its records), reported in the window
//! of its closing time.
//!
//! A [`Table`] holds the open sessions of one partition, its watermark and the highest offset
//! it includes; it is stored whole as one row, so after a crash the replay from the last
//! commit rebuilds exactly the sessions, and closes them at exactly the same records, as the
//! first pass did. Pure: no I/O, no clock.

use crate::base::de;
use crate::event::Text;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

/// `session = { gap = "30s", max_length = "1h", measure = "duration" }` on a `[[metric]]`:
/// the metric reduces the sessions of its `key` instead of its records, reported per `window`
/// of closing time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// A key's session ends after this long without a record of it.
    #[serde(deserialize_with = "de::duration")]
    pub gap: Duration,
    /// A session is closed once it is this long, even while its records keep coming; the next
    /// record starts a new one.
    #[serde(default = "default_max_length", deserialize_with = "de::duration")]
    pub max_length: Duration,
    /// What each closed session gives the reducer: `sessions` (one each: with `count`, sessions
    /// per window), `duration` (seconds from its first record to its last) or `events` (its
    /// records).
    #[serde(default)]
    pub measure: Measure,
}

fn default_max_length() -> Duration {
    Duration::from_secs(14_400)
}

/// What a closed session gives the metric's reducer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// One per session (for `count`).
    #[default]
    Sessions,
    /// Seconds from its first record to its last.
    Duration,
    /// How many records it had.
    Events,
}

/// The session settings in milliseconds, with the metric's lateness and bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    pub gap_ms: i64,
    pub max_length_ms: i64,
    pub lateness_ms: i64,
    /// Most sessions open at once per partition; past it the one due first is closed early.
    pub max_open: usize,
}

impl SessionConfig {
    /// What is wrong with the settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.gap.is_zero() {
            return Some("session gap must be longer than 0".into());
        }
        (self.max_length < self.gap).then(|| {
            format!(
                "session max_length ({:?}) is shorter than its gap ({:?})",
                self.max_length, self.gap
            )
        })
    }
}

/// A closed session, as the reducer takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closed {
    /// When it counts as closed (ms): its last record plus the gap (or its start plus
    /// `max_length`), but never before the watermark less the lateness, so it lands in a window
    /// that is still open.
    pub at: i64,
    pub duration_ms: i64,
    pub events: u64,
    /// Whether one of its records passed the script's `having` filter.
    pub marked: bool,
}

impl Closed {
    /// What it gives the reducer under `measure`.
    pub fn value(&self, measure: Measure) -> f64 {
        match measure {
            Measure::Sessions => 1.0,
            Measure::Duration => self.duration_ms as f64 / 1000.0,
            Measure::Events => self.events as f64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Open {
    /// Its earliest record's time.
    start: i64,
    /// The time of the record that opened it: `max_length` counts from here, so a deadline
    /// never moves earlier (an out-of-order record may move `start` back).
    opened: i64,
    last: i64,
    events: u64,
    marked: bool,
}

impl Open {
    fn new(t: i64, marked: bool) -> Open {
        Open {
            start: t,
            opened: t,
            last: t,
            events: 1,
            marked,
        }
    }

    /// When it ends if no record comes: its last record plus the gap, or its start plus the
    /// longest a session may be.
    fn deadline(&self, spec: &Spec) -> i64 {
        self.last
            .saturating_add(spec.gap_ms)
            .min(self.opened.saturating_add(spec.max_length_ms))
    }

    fn closed(&self, spec: &Spec, watermark: i64) -> Closed {
        Closed {
            at: self
                .deadline(spec)
                .max(watermark.saturating_sub(spec.lateness_ms)),
            duration_ms: self.last - self.start,
            events: self.events,
            marked: self.marked,
        }
    }
}

/// The open sessions of one partition.
#[derive(Debug)]
pub struct Table {
    open: HashMap<Text, Open, foldhash::fast::RandomState>,
    /// One entry per open session, earliest deadline first. Lazy: a session that got records
    /// since its entry was queued has a later deadline, and is queued again when the entry
    /// comes up, so a record costs a map update, not a heap operation.
    due: BinaryHeap<Reverse<(i64, Text)>>,
    /// Sessions [`Self::close_due`] is closing, kept between calls for its memory.
    closing: Vec<(Text, Closed)>,
    /// Newest record time seen (ms; `i64::MIN`: none).
    pub watermark: i64,
    /// The highest offset of the partition applied (-1: none).
    pub offset: i64,
    /// Changed since it was last stored.
    pub dirty: bool,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            open: HashMap::default(),
            due: BinaryHeap::new(),
            closing: Vec::new(),
            watermark: i64::MIN,
            offset: -1,
            dirty: false,
        }
    }
}

impl Table {
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Adds one record of session `key` at time `t` (after the watermark moved to it); a
    /// record `gap` or more after the session's last one, or `max_length` after the record
    /// that opened it, closes that session (returned) and starts a new one. An earlier record (out of
    /// order, within the lateness) joins the open session.
    pub fn add(&mut self, key: &str, t: i64, marked: bool, spec: &Spec) -> Option<Closed> {
        self.dirty = true;
        if let Some(s) = self.open.get_mut(key) {
            if t < s.last.saturating_add(spec.gap_ms)
                && t < s.opened.saturating_add(spec.max_length_ms)
            {
                s.start = s.start.min(t);
                s.last = s.last.max(t);
                s.events += 1;
                s.marked |= marked;
                return None;
            }
            // Its queue entry stays: it comes up no later than the new session's deadline.
            let closed = s.closed(spec, self.watermark);
            *s = Open::new(t, marked);
            return Some(closed);
        }
        let s = Open::new(t, marked);
        self.due.push(Reverse((s.deadline(spec), Text::from(key))));
        self.open.insert(Text::from(key), s);
        None
    }

    /// Closes the sessions whose deadline the watermark (less the lateness) has reached, and
    /// when more than `max_open` are open, those due first until the table is within it;
    /// appends them to `out` in (closing time, key) order, so a replay closes the same sessions
    /// in the same order.
    pub fn close_due(&mut self, spec: &Spec, out: &mut Vec<Closed>) {
        let limit = self.watermark.saturating_sub(spec.lateness_ms);
        loop {
            let over = self.open.len() > spec.max_open;
            match self.due.peek() {
                Some(Reverse((queued, _))) if *queued <= limit || over => {}
                _ => break,
            }
            let Some(Reverse((queued, key))) = self.due.pop() else {
                break;
            };
            let Some(s) = self.open.get(&key) else {
                continue;
            };
            let deadline = s.deadline(spec);
            if deadline > queued {
                // It got records since it was queued: queued again at its real deadline (so
                // over `max_open` the one really due first is found).
                self.due.push(Reverse((deadline, key)));
                continue;
            }
            if let Some(s) = self.open.remove(&key) {
                self.closing.push((key, s.closed(spec, self.watermark)));
            }
        }
        if self.closing.is_empty() {
            return;
        }
        self.dirty = true;
        self.closing
            .sort_unstable_by(|a, b| (a.1.at, &a.0).cmp(&(b.1.at, &b.0)));
        out.extend(self.closing.drain(..).map(|(_, c)| c));
    }

    /// The table as stored: its watermark and open sessions, keys in order (the same bytes
    /// whatever the process's hash seed). Times are stored relative (a session's start back
    /// from the watermark, its opening and last record on from its start): a few digits where
    /// epoch milliseconds take thirteen, and the table is rewritten whole. Serialized straight
    /// from the rows: through a `serde_json::Value` it cost a tenth of the consumer's CPU.
    pub fn encode(&self) -> String {
        let mut sessions: Vec<(&Text, &Open)> = self.open.iter().collect();
        sessions.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let w = self.watermark;
        let open: Vec<Row<&str>> = sessions
            .into_iter()
            .map(|(k, s)| {
                (
                    k.as_str(),
                    w.wrapping_sub(s.start),
                    s.opened.wrapping_sub(s.start),
                    s.last.wrapping_sub(s.start),
                    s.events,
                    s.marked as u8,
                )
            })
            .collect();
        let stored = Stored {
            watermark: w,
            times: Times::Relative,
            open,
        };
        serde_json::to_string(&stored).expect("a session table always serializes")
    }

    /// A stored table's watermark, read without its sessions (`None`: none yet, or unreadable).
    pub fn watermark_of(stored: &crate::store::StateJson) -> Option<i64> {
        #[derive(Deserialize)]
        struct Head {
            watermark: i64,
        }
        stored
            .parse::<Head>()
            .ok()
            .map(|h| h.watermark)
            .filter(|w| *w != i64::MIN)
    }

    /// A stored table read back, as of `offset` (either way its times were written).
    pub fn decode(stored: &str, offset: i64, spec: &Spec) -> Result<Table, String> {
        let s: Stored<Text> = serde_json::from_str(stored)
            .map_err(|e| format!("a stored session table does not read: {e}"))?;
        let w = s.watermark;
        let mut t = Table {
            watermark: w,
            offset,
            ..Table::default()
        };
        for (key, a, b, c, events, marked) in s.open {
            let open = match s.times {
                Times::Absolute => Open {
                    start: a,
                    opened: b,
                    last: c,
                    events,
                    marked: marked != 0,
                },
                Times::Relative => {
                    let start = w.wrapping_sub(a);
                    Open {
                        start,
                        opened: start.wrapping_add(b),
                        last: start.wrapping_add(c),
                        events,
                        marked: marked != 0,
                    }
                }
            };
            t.due.push(Reverse((open.deadline(spec), key.clone())));
            t.open.insert(key, open);
        }
        Ok(t)
    }
}

/// One open session as stored: its key, three times (see [`Times`]), its records, and whether
/// it is marked (0 or 1).
type Row<K> = (K, i64, i64, i64, u64, u8);

/// A [`Table`] as stored.
#[derive(Serialize, Deserialize)]
struct Stored<K> {
    watermark: i64,
    #[serde(default)]
    times: Times,
    open: Vec<Row<K>>,
}

/// How a stored row's three times are written.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Times {
    /// Start, opening and last record in ms since the epoch (tables stored before relative
    /// times, which carry no `times` field).
    #[default]
    Absolute,
    /// The watermark less the start, then the opening and the last record less the start.
    Relative,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            gap_ms: 30_000,
            max_length_ms: 600_000,
            lateness_ms: 5_000,
            max_open: 1_000,
        }
    }

    /// Feeds (key, time) records in order, moving the watermark as a consumer does, and
    /// returns every closed session.
    fn feed(t: &mut Table, records: &[(&str, i64)], spec: &Spec) -> Vec<Closed> {
        let mut out = Vec::new();
        for (key, at) in records {
            t.watermark = t.watermark.max(*at);
            out.extend(t.add(key, *at, false, spec));
            t.close_due(spec, &mut out);
        }
        out
    }

    #[test]
    fn a_session_closes_once_the_watermark_passes_its_gap_and_lateness() {
        let spec = spec();
        let mut t = Table::default();
        let closed = feed(
            &mut t,
            &[("a", 0), ("a", 10_000), ("a", 20_000), ("b", 54_999)],
            &spec,
        );
        assert!(closed.is_empty(), "20 s + 30 s gap + 5 s lateness is 55 s");
        let closed = feed(&mut t, &[("b", 55_000)], &spec);
        assert_eq!(
            closed,
            vec![Closed {
                at: 50_000,
                duration_ms: 20_000,
                events: 3,
                marked: false
            }]
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_record_after_the_gap_starts_a_new_session_of_its_key() {
        let spec = spec();
        let mut t = Table::default();
        let closed = feed(&mut t, &[("a", 0), ("a", 5_000), ("a", 40_000)], &spec);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].duration_ms, closed[0].events), (5_000, 2));
        assert_eq!(closed[0].at, 35_000);
        assert_eq!(t.len(), 1, "the new session is open");
    }

    #[test]
    fn a_session_longer_than_max_length_is_cut() {
        let spec = Spec {
            max_length_ms: 60_000,
            ..spec()
        };
        let mut t = Table::default();
        let records: Vec<(&str, i64)> = (0..20).map(|i| ("a", i * 10_000)).collect();
        let closed = feed(&mut t, &records, &spec);
        // Records every 10 s for 190 s: cut at 60 s, 120 s and 180 s.
        assert_eq!(
            closed.iter().map(|c| c.events).collect::<Vec<_>>(),
            vec![6, 6, 6]
        );
        assert!(closed.iter().all(|c| c.duration_ms == 50_000));
    }

    #[test]
    fn more_open_sessions_than_max_open_close_the_ones_due_first() {
        let spec = Spec {
            max_open: 2,
            ..spec()
        };
        let mut t = Table::default();
        let closed = feed(&mut t, &[("a", 0), ("b", 1_000), ("c", 2_000)], &spec);
        assert_eq!(closed.len(), 1);
        assert_eq!(t.len(), 2);
        assert!(t.open.contains_key("b") && t.open.contains_key("c"));
    }

    #[test]
    fn closing_order_and_sessions_do_not_depend_on_a_reload_of_the_table() {
        let spec = spec();
        let records: Vec<(String, i64)> = (0..400)
            .map(|i| (format!("k{}", (i * 7) % 23), i * 1_700 + (i % 5) * 300))
            .collect();
        let as_ref: Vec<(&str, i64)> = records.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        let mut whole = Table::default();
        let all = feed(&mut whole, &as_ref, &spec);
        // The same stream with the table stored and read back every 37 records.
        let mut t = Table::default();
        let mut pieces = Vec::new();
        for chunk in as_ref.chunks(37) {
            pieces.extend(feed(&mut t, chunk, &spec));
            t = Table::decode(&t.encode(), t.offset, &spec).unwrap();
        }
        assert_eq!(all, pieces);
        assert!(all.len() > 20);
        assert_eq!(whole.encode(), t.encode());
    }

    #[test]
    fn a_table_stored_with_absolute_times_reads_as_the_same_sessions() {
        let spec = spec();
        let mut t = Table::default();
        let at = 1_765_000_000_000;
        feed(
            &mut t,
            &[("a", at), ("b", at + 3_000), ("a", at + 8_000)],
            &spec,
        );
        let old = r#"{"watermark":1765000008000,"open":[["a",1765000000000,1765000000000,1765000008000,2,0],["b",1765000003000,1765000003000,1765000003000,1,0]]}"#;
        let read = Table::decode(old, 7, &spec).unwrap();
        assert_eq!(read.open, t.open);
        assert_eq!(read.encode(), t.encode());
        assert!(
            t.encode().len() < old.len(),
            "relative times are shorter: {}",
            t.encode()
        );
    }

    #[test]
    fn a_table_with_extreme_times_reads_back_exactly() {
        let spec = spec();
        let mut t = Table::default();
        feed(
            &mut t,
            &[("early", i64::MIN + 1), ("late", i64::MAX)],
            &spec,
        );
        let read = Table::decode(&t.encode(), 0, &spec).unwrap();
        assert_eq!(read.open, t.open);
        assert_eq!(read.watermark, t.watermark);
    }

    #[test]
    fn measures_read_a_closed_session() {
        let c = Closed {
            at: 0,
            duration_ms: 12_500,
            events: 4,
            marked: true,
        };
        assert_eq!(c.value(Measure::Sessions), 1.0);
        assert_eq!(c.value(Measure::Duration), 12.5);
        assert_eq!(c.value(Measure::Events), 4.0);
    }
}
