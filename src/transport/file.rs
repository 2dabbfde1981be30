//! The file source: records read from a file (or stdin) instead of the generator and Kafka, into
//! the same consumer, store and metrics. JSON records are one per line; Avro and Protobuf ones
//! each after its length (a varint, as `runner generate --raw` writes them).
//!
//! The position of a record is its number in the input (the line, for JSON), on partition 0: a
//! record without an id is named `file:record`, and the metrics skip what they counted before,
//! so running the same file again stores and counts nothing twice.

use super::{Acknowledge, Batch, Checkpoint, Poll, Subscriber};
use crate::codec::{Codec, Format};
use crate::dead_letter::DeadLetter;
use crate::telemetry::Stats;
use async_trait::async_trait;
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The partition of a file's records.
pub const FILE_PARTITION: i32 = 0;

/// `[source]`: read records from a file instead of the generator and the transport.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A file of records (`-` for stdin) in `[event] format`: JSON lines, or Avro / Protobuf
    /// records each after its length (a varint). `runner run --source FILE` sets it.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// At the end of the file, wait for more (as `tail -f`) instead of finishing.
    #[serde(default)]
    pub follow: bool,
}

/// Reads records from a file or stdin.
pub struct FileSubscriber {
    input: Box<dyn BufRead + Send>,
    /// The file's name, for ids of records without one and for dead letters.
    name: String,
    codec: Codec,
    batch_size: usize,
    /// The number of the next record (its position).
    next: i64,
    follow: bool,
    /// A record cut short by the end of the input so far (kept while following).
    partial: Vec<u8>,
    ended: bool,
    stats: Arc<Stats>,
}

impl FileSubscriber {
    pub fn open(
        config: &SourceConfig,
        codec: Codec,
        batch_size: usize,
        stats: Arc<Stats>,
    ) -> anyhow::Result<FileSubscriber> {
        let path = config
            .file
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no [source] file"))?;
        let (input, name): (Box<dyn BufRead + Send>, String) = match path.to_str() {
            Some("-") => (Box::new(BufReader::new(std::io::stdin())), "stdin".into()),
            _ => {
                let file = std::fs::File::open(&path).map_err(|e| {
                    anyhow::anyhow!("cannot read the source file {}: {e}", path.display())
                })?;
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                (Box::new(BufReader::with_capacity(1 << 20, file)), name)
            }
        };
        Ok(FileSubscriber {
            input,
            name,
            codec,
            batch_size,
            next: 0,
            follow: config.follow,
            partial: Vec::new(),
            ended: false,
            stats,
        })
    }

    /// The next record's bytes; `None` at the end of the input (so far, when following).
    fn read_one(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        match self.codec.format() {
            Format::Json => {
                let mut line = std::mem::take(&mut self.partial);
                self.input.read_until(b'\n', &mut line)?;
                if line.last() != Some(&b'\n') {
                    // The end of the input, perhaps inside a line still being written.
                    if self.follow || line.is_empty() {
                        self.partial = line;
                        return Ok(None);
                    }
                }
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                Ok(Some(line))
            }
            Format::Avro | Format::Protobuf => {
                let mut head = std::mem::take(&mut self.partial);
                // A varint length, then that many bytes.
                let length = loop {
                    if let Some(n) = varint(&head) {
                        break Some(n);
                    }
                    let mut byte = [0u8];
                    if self.input.read(&mut byte)? == 0 {
                        break None;
                    }
                    head.push(byte[0]);
                    if head.len() > 10 {
                        return Ok(Some(head)); // not a length: the decoder says so
                    }
                };
                let Some((length, used)) = length else {
                    if self.follow || head.is_empty() {
                        self.partial = head;
                        return Ok(None);
                    }
                    return Ok(Some(head));
                };
                let mut record = head.split_off(used);
                let want = (length as usize).saturating_sub(record.len());
                let got = (&mut self.input)
                    .take(want as u64)
                    .read_to_end(&mut record)?;
                // Cut short: while following, the rest may still come; otherwise the record
                // as far as it goes, for the decoder to refuse.
                if got < want && self.follow {
                    head.extend(record);
                    self.partial = head;
                    return Ok(None);
                }
                Ok(Some(record))
            }
        }
    }

    /// Reads up to a batch of records (blocking I/O: run off the async threads).
    fn fill(&mut self) -> anyhow::Result<Batch> {
        let mut batch = Batch::default();
        while batch.events.len() + batch.dead.len() < self.batch_size {
            let Some(bytes) = self.read_one()? else {
                self.ended = !self.follow;
                break;
            };
            let at = self.next;
            self.next += 1;
            if self.codec.format() == Format::Json && bytes.iter().all(u8::is_ascii_whitespace) {
                batch.checkpoint.include(FILE_PARTITION, at);
                continue; // a blank line: no record
            }
            match self.codec.decode(Some(&bytes)) {
                Ok(mut event) => {
                    if event.id().is_empty() {
                        event.set_id(compact_str::format_compact!("{}:{at}", self.name));
                    }
                    batch.events.push(event);
                    batch.sources.push((FILE_PARTITION, at));
                }
                Err((reason, detail)) => {
                    batch.dead.push(DeadLetter::new(
                        format!("{}:{at}", self.name),
                        reason,
                        detail,
                        (FILE_PARTITION, at),
                        &bytes,
                    ));
                }
            }
            batch.checkpoint.include(FILE_PARTITION, at);
        }
        Ok(batch)
    }
}

/// A varint at the start of `bytes` and how many bytes it took; `None` when it is not complete
/// (yet) or not a varint.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut rest = bytes;
    let n = prost::encoding::decode_varint(&mut rest).ok()?;
    Some((n, bytes.len() - rest.len()))
}

struct NoCommit;
impl Acknowledge for NoCommit {
    // Nothing to commit: a run of the same file is made harmless by the positions instead.
    fn acknowledge(&self, _: &Checkpoint) {}
}

#[async_trait]
impl Subscriber for FileSubscriber {
    async fn poll_batch(&mut self, wait: Duration) -> anyhow::Result<Poll> {
        if self.ended {
            return Ok(Poll::Closed);
        }
        let deadline = Instant::now() + wait;
        loop {
            let batch = tokio::task::block_in_place(|| self.fill())?;
            let read = batch.events.len() + batch.dead.len();
            if read > 0 || !batch.checkpoint.0.is_empty() {
                self.stats.consumed(batch.events.len());
                return Ok(Poll::Batch(batch));
            }
            if self.ended {
                return Ok(Poll::Closed);
            }
            // Following, at the end for now.
            if Instant::now() >= deadline {
                return Ok(Poll::Empty);
            }
            tokio::time::sleep(Duration::from_millis(50).min(wait)).await;
        }
    }

    fn acknowledger(&self) -> Arc<dyn Acknowledge> {
        Arc::new(NoCommit)
    }

    async fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The history of a file source is the file, read again. Its positions are the record numbers
/// the subscriber gives, so a backfill's seam (the number before a batch's first record) and the
/// live records meet exactly; the embedded store's raw rows are numbered by the store, and a
/// backfill that read them up to a record number lost or counted twice the records between.
/// Stdin has no history.
pub struct FileHistory {
    path: PathBuf,
    codec: Codec,
    /// The reader of the last read, to go on from where it stopped (a backfill reads in order).
    cursor: tokio::sync::Mutex<Option<Cursor>>,
}

/// A reader of the file and the records it read past the last range asked for.
struct Cursor {
    reader: FileSubscriber,
    ahead: std::collections::VecDeque<(i64, crate::event::Record)>,
}

impl Cursor {
    /// The position of the next record it gives.
    fn next(&self) -> i64 {
        self.ahead.front().map_or(self.reader.next, |(at, _)| *at)
    }
}

/// Records read in one step of a history read.
const HISTORY_STEP: usize = 5_000;

impl FileHistory {
    /// The history of `config`'s file; `None` for stdin or no file.
    pub fn new(config: &SourceConfig, codec: Codec) -> Option<FileHistory> {
        let path = config.file.clone().filter(|p| p.as_os_str() != "-")?;
        Some(FileHistory {
            path,
            codec,
            cursor: Default::default(),
        })
    }

    /// A reader from the file's start. It follows, so a record still being written at the end is
    /// left for later, not read cut short.
    fn reader(&self) -> anyhow::Result<FileSubscriber> {
        let config = SourceConfig {
            file: Some(self.path.clone()),
            follow: true,
        };
        FileSubscriber::open(&config, self.codec.clone(), HISTORY_STEP, Stats::new())
    }
}

/// Runs a file read where the runtime allows blocking: beside the multi-threaded runtime's
/// workers, or in place on a current-thread one (the workbench's try has its own thread).
fn blocking<T>(read: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(read),
        _ => read(),
    }
}

#[async_trait]
impl super::History for FileHistory {
    async fn start(&self, _partition: i32, _since_ms: i64) -> anyhow::Result<(i64, bool)> {
        // A file has no index by time: it is read from its first record, and the reader keeps
        // the records of the range.
        Ok((0, false))
    }

    async fn read(
        &self,
        _partition: i32,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> anyhow::Result<super::HistoryRead> {
        let mut guard = self.cursor.lock().await;
        if guard.as_ref().is_none_or(|c| c.next() > after + 1) {
            *guard = Some(Cursor {
                reader: self.reader()?,
                ahead: Default::default(),
            });
        }
        let cursor = guard.as_mut().expect("set above");
        let mut events = Vec::new();
        loop {
            while let Some((at, _)) = cursor.ahead.front() {
                if *at > upto || events.len() >= limit {
                    break;
                }
                let record = cursor.ahead.pop_front().expect("looked at");
                if record.0 > after {
                    events.push(record);
                }
            }
            let more = cursor.ahead.is_empty() && events.len() < limit;
            if !more {
                break;
            }
            let batch = blocking(|| cursor.reader.fill())?;
            if batch.events.is_empty() && batch.checkpoint.0.is_empty() {
                break; // the end of the file, for now
            }
            let positions = batch.sources.into_iter().map(|(_, at)| at);
            cursor.ahead.extend(positions.zip(batch.events));
        }
        let through = match events.len() < limit {
            true => upto.min(cursor.next() - 1).max(after),
            false => events.last().map_or(after, |(at, _)| *at),
        };
        Ok(super::HistoryRead { events, through })
    }

    async fn end(&self, _partition: i32) -> anyhow::Result<i64> {
        let mut reader = self.reader()?;
        loop {
            let batch = blocking(|| reader.fill())?;
            if batch.events.is_empty() && batch.checkpoint.0.is_empty() {
                return Ok(reader.next - 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::Reason;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_file_s_history_has_the_positions_its_records_were_consumed_at() {
        use crate::transport::History;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let line = |id: &str| format!("{{\"id\":\"{id}\",\"t\":\"2026-01-01T00:00:00Z\"}}\n");
        // A blank line and a broken record take positions too, as they do when consumed.
        let text = [
            line("a"),
            "\n".into(),
            line("b"),
            "{broken\n".into(),
            line("c"),
            line("d"),
        ]
        .concat();
        std::fs::write(&path, text + "{\"id\":\"half").unwrap();
        let mut live = subscriber(path.clone(), false);
        let mut consumed = Vec::new();
        loop {
            let b = live.fill().unwrap();
            if b.events.is_empty() && b.checkpoint.0.is_empty() {
                break;
            }
            consumed.extend(b.sources.iter().map(|s| s.1));
        }
        assert_eq!(
            consumed,
            [0, 2, 4, 5],
            "the positions records are consumed at"
        );
        let codec = live.codec.clone();
        let history = FileHistory::new(
            &SourceConfig {
                file: Some(path.clone()),
                follow: false,
            },
            codec,
        )
        .unwrap();
        assert_eq!(
            history.end(0).await.unwrap(),
            5,
            "the last whole record is number 5"
        );
        let ids = |r: &crate::transport::HistoryRead| -> Vec<(i64, String)> {
            r.events
                .iter()
                .map(|(at, e)| (*at, e.id().to_string()))
                .collect()
        };
        let first = history.read(0, -1, 5, 2).await.unwrap();
        assert_eq!(ids(&first), [(0, "a".into()), (2, "b".into())]);
        assert_eq!(first.through, 2);
        let rest = history.read(0, 2, 5, 10).await.unwrap();
        assert_eq!(ids(&rest), [(4, "c".into()), (5, "d".into())]);
        assert_eq!(rest.through, 5);
        // Up to a seam: nothing past it; then from an earlier position again.
        let upto = history.read(0, -1, 3, 10).await.unwrap();
        assert_eq!(ids(&upto), [(0, "a".into()), (2, "b".into())]);
        assert_eq!(upto.through, 3);
        let again = history.read(0, 0, 4, 10).await.unwrap();
        assert_eq!(ids(&again), [(2, "b".into()), (4, "c".into())]);
        assert!(FileHistory::new(
            &SourceConfig {
                file: Some("-".into()),
                follow: false
            },
            live.codec.clone()
        )
        .is_none());
    }

    fn subscriber(path: PathBuf, follow: bool) -> FileSubscriber {
        let schema = crate::event::schema_of(
            "id = \"id\"\ntime = \"t\"\n[fields]\nid = \"string\"\nt = \"timestamp\"",
        );
        FileSubscriber::open(
            &SourceConfig {
                file: Some(path),
                follow,
            },
            Codec::json(schema, 1 << 20),
            3,
            Stats::new(),
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn json_lines_are_read_in_batches_with_their_line_numbers_as_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(&path, "{\"t\":\"2026-01-01T00:00:00Z\"}\n\nnot json\n{\"id\":\"x\",\"t\":\"2026-01-01T00:00:01Z\"}\n{\"t\":\"2026-01-01T00:00:02Z\"}").unwrap();
        let mut s = subscriber(path, false);
        let Poll::Batch(b) = s.poll_batch(Duration::from_millis(10)).await.unwrap() else {
            panic!("a batch")
        };
        let ids: Vec<&str> = b.events.iter().map(|e| e.id()).collect();
        assert_eq!(ids, ["e.jsonl:0", "x"], "a blank line is no record");
        assert_eq!(b.sources, vec![(0, 0), (0, 3)]);
        assert_eq!(b.dead.len(), 1);
        assert_eq!((b.dead[0].reason, b.dead[0].offset), (Reason::NotJson, 2));
        assert_eq!(b.checkpoint.0, vec![(FILE_PARTITION, 4)]);
        let Poll::Batch(b) = s.poll_batch(Duration::from_millis(10)).await.unwrap() else {
            panic!("a batch")
        };
        let ids: Vec<&str> = b.events.iter().map(|e| e.id()).collect();
        assert_eq!(ids, ["e.jsonl:4"], "the last line needs no newline");
        assert!(matches!(
            s.poll_batch(Duration::from_millis(10)).await.unwrap(),
            Poll::Closed
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn following_waits_for_a_line_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(&path, "{\"t\":\"2026-01-01T00:00:00Z\"}\n{\"t\":\"2026-01").unwrap();
        let mut s = subscriber(path.clone(), true);
        let Poll::Batch(b) = s.poll_batch(Duration::from_millis(10)).await.unwrap() else {
            panic!("a batch")
        };
        assert_eq!(b.events.len(), 1);
        assert!(matches!(
            s.poll_batch(Duration::from_millis(10)).await.unwrap(),
            Poll::Empty
        ));
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"-01T00:00:01Z\"}\n").unwrap();
        let Poll::Batch(b) = s.poll_batch(Duration::from_millis(10)).await.unwrap() else {
            panic!("a batch")
        };
        assert_eq!((b.events.len(), b.sources[0]), (1, (0, 1)));
        assert_eq!(b.events[0].time_ms(), 1_767_225_601_000);
    }
}
