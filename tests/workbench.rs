//! The metric workbench end to end: `runner try` against the embedded store's records, and the
//! `/workbench` page in a real headless Chromium (check, try, save, the metric on the dashboard),
//! with a viewer's token refused at every workbench route.

mod common;

use common::{free_port, get, post, wait_for_port, Fields};
use runner::store::embedded::{EmbeddedConfig, EmbeddedStore};
use runner::store::RawEvents;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The draft every test writes: purchases counted per item, per minute.
const SCRIPT: &str = "// Purchases per item.\n#{\n    filter: field_is(\"interaction_type\", \"purchase\"),\n    key: field(\"item_id\"),\n}\n";

/// Purchases per item among the stored records of `[start, end)`, as the metric reports them.
async fn recount(data: &Path, file: &Path, (start, end): (i64, i64)) -> Value {
    let p = common::load_pipeline_file(file, &[]);
    let store = EmbeddedStore::open(
        &EmbeddedConfig {
            data_dir: data.to_path_buf(),
            ..Default::default()
        },
        &Default::default(),
        &p.schema(),
        &[],
    )
    .unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in store.all_events().await.unwrap() {
        if e.s("interaction_type") == "purchase" && (start..end).contains(&e.time_ms()) {
            *counts.entry(e.s("item_id").to_string()).or_default() += 1;
        }
    }
    json!(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_try_counts_per_window_what_the_stored_records_hold() {
    let dir = tempfile::tempdir().unwrap();
    let file = common::copy_pipeline(dir.path());
    let data = dir.path().join("data");
    let run = common::runner()
        .args([
            "run",
            file.to_str().unwrap(),
            "--components",
            "generator,consumer",
            "--events",
            "20000",
            "--generation-rate",
            "5000",
            "--exit-when-idle",
            "1s",
        ])
        .env("RUNNER_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::create_dir_all(dir.path().join("draft")).unwrap();
    let draft = dir.path().join("draft/purchases.toml");
    std::fs::write(
        &draft,
        "name = \"purchases_per_item\"\nscript = \"purchases.rhai\"\nreducer = \"count\"\nwindow = \"60s\"\n",
    )
    .unwrap();
    let try_it = || {
        common::runner()
            .args(["try", file.to_str().unwrap(), "--metric"])
            .arg(&draft)
            .args(["--since", "10m", "--json"])
            .env("RUNNER_DATA_DIR", &data)
            .output()
            .unwrap()
    };
    // A typo is reported at its line, and nothing runs.
    std::fs::write(
        dir.path().join("draft/purchases.rhai"),
        SCRIPT.replace("\"interaction_type\",", "\"interaction_type\""),
    )
    .unwrap();
    let out = try_it();
    assert!(!out.status.success(), "a draft that does not compile fails");
    let tried: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tried["problems"][0]["line"], 3, "{tried}");
    assert!(
        tried["problems"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("draft/purchases.rhai"),
        "{tried}"
    );

    std::fs::write(dir.path().join("draft/purchases.rhai"), SCRIPT).unwrap();
    let out = try_it();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tried: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tried["events"], 20000, "every stored record was read");
    assert_eq!(tried["complete"], true);
    // Every window of the chart holds what the stored records of that minute count.
    let mut purchases = 0;
    for point in tried["series"].as_array().unwrap() {
        let end = point["end"].as_i64().unwrap();
        let expected = recount(&data, &file, (end - 60_000, end)).await;
        assert_eq!(point["value"], expected, "window ending {end}");
        purchases += expected
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>();
    }
    assert!(purchases > 0, "the records hold purchases: {tried}");
    let (start, end) = (
        tried["value"]["window_start"].as_i64().unwrap(),
        tried["value"]["window_end"].as_i64().unwrap(),
    );
    assert_eq!(
        tried["value"]["value"],
        recount(&data, &file, (start, end)).await
    );
    assert!(
        tried["samples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["gave"]["passes"] == true && s["gave"]["key"].is_string()),
        "a sample that passes shows its key: {}",
        tried["samples"]
    );
    assert!(
        tried["current"].is_null(),
        "no running metric of that name to compare"
    );
}

/// Records of the history file.
const HISTORY: u64 = 60_000;

/// `count` records of the shipped pipeline's shape spread evenly over the last `span`, in time
/// order, as JSON lines.
fn history_file(path: &Path, count: u64, span: Duration) {
    use std::io::Write;
    let now = chrono::Utc::now().timestamp_millis();
    let step = span.as_millis() as i64 / count as i64;
    let kinds = ["view", "view", "view", "click", "add_to_cart", "purchase"];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..count {
        let at = chrono::DateTime::from_timestamp_millis(
            now - span.as_millis() as i64 + i as i64 * step,
        )
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        writeln!(
            out,
            r#"{{"event_id":"h-{i}","user_id":"user_{}","item_id":"item_{}","interaction_type":"{}","timestamp":"{at}","price":{}}}"#,
            i % 97,
            (i * 7) % 23,
            kinds[(i % 6) as usize],
            (i % 50) as f64 + 0.5
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workbench_checks_tries_and_saves_a_metric_that_then_shows_on_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let file = common::copy_pipeline(dir.path());
    // A viewer and an editor; the single operator token stays unset.
    let mut text = std::fs::read_to_string(&file).unwrap();
    // `workbench = true` opens it only where no token is configured: a viewer's token named
    // "anonymous" must not pass for the absence of one.
    text = text.replacen("\n[dashboard]\n", "\n[dashboard]\nworkbench = true\n", 1);
    text.push_str("\n[dashboard.tokens]\nwatcher = { secret = \"v1ewer-secret\", role = \"viewer\" }\nanonymous = { secret = \"an0n-secret\", role = \"viewer\" }\nedith = { secret = \"ed1tor-secret\", role = \"editor\" }\n");
    std::fs::write(&file, text).unwrap();
    let records = dir.path().join("records.jsonl");
    // Ten minutes of history at 100 records/s (the README gives the time of a try over ten times more).
    history_file(&records, HISTORY, Duration::from_secs(600));
    let data = dir.path().join("data");
    let port = free_port();
    let mut child = common::runner()
        .args([
            "run",
            file.to_str().unwrap(),
            "--components",
            "consumer,dashboard",
            "--source",
        ])
        .arg(&records)
        .args([
            "--follow",
            "--dashboard-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUNNER_DATA_DIR", &data)
        .env("RUNNER_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("runner.log")).unwrap())
        .spawn()
        .unwrap();
    let log = dir.path().join("runner.log");
    let result = std::panic::AssertUnwindSafe(workbench_flow(port, &file, &data, &records))
        .catch_unwind_into_result()
        .await;
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        eprintln!(
            "runner log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::panic::resume_unwind(panic);
    }
}

/// Purchases appended to the source file, 20 a second, stamped now, until stopped (each one
/// counts: a record lost or counted twice shows).
struct Trickle {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Trickle {
    fn start(path: &Path, prefix: &'static str) -> Trickle {
        use std::io::Write;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, path) = (stop.clone(), path.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            let mut written = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let i = written as usize;
                // One write per line: the reader never sees half a record.
                let line = format!(
                    "{{\"event_id\":\"{prefix}-{i}\",\"user_id\":\"user_{}\",\"item_id\":\"item_{}\",\"interaction_type\":\"purchase\",\"timestamp\":\"{at}\"}}\n",
                    i % 97,
                    i % 23
                );
                file.write_all(line.as_bytes()).unwrap();
                written += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            written
        });
        Trickle {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; returns how many records it wrote.
    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits until the pipeline has stored `count` records.
async fn stored(port: u16, count: u64) {
    let t = Instant::now();
    loop {
        let (_, body) = get(
            port,
            "/api/health",
            &[("Authorization", "Bearer v1ewer-secret")],
        );
        let stored = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|h| h["stored"].as_u64())
            .unwrap_or(0);
        if stored >= count {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{stored} of {count} records stored: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a future and gives its panic back as an error, so the caller can clean up first.
trait CatchUnwind: std::future::Future + Sized {
    async fn catch_unwind_into_result(self) -> std::thread::Result<Self::Output>;
}

impl<F: std::future::Future + std::panic::UnwindSafe> CatchUnwind for F {
    async fn catch_unwind_into_result(self) -> std::thread::Result<Self::Output> {
        futures::FutureExt::catch_unwind(self).await
    }
}

async fn workbench_flow(port: u16, file: &Path, data: &Path, records: &Path) {
    wait_for_port(port).await;
    let viewer = [("Authorization", "Bearer v1ewer-secret")];
    // Everything is consumed before anything is tried.
    stored(port, HISTORY).await;

    // A viewer reaches no part of the workbench, and the page says why.
    let draft = json!({"settings": {"name": "purchases_per_item", "reducer": "count", "window": "60s"}, "script": SCRIPT});
    for (path, body) in [
        ("/api/workbench/check", draft.to_string()),
        ("/api/workbench/try", json!({"draft": draft}).to_string()),
        ("/api/workbench/save", draft.to_string()),
    ] {
        let (status, why) = post(port, path, &viewer, &body);
        assert_eq!(status, 403, "{path}: {why}");
        assert!(why.contains("editor role"), "{path}: {why}");
    }
    let (status, why) = post(
        port,
        "/api/workbench/check",
        &[("Authorization", "Bearer an0n-secret")],
        &draft.to_string(),
    );
    assert_eq!(status, 403, "a viewer token named anonymous: {why}");
    assert_eq!(get(port, "/workbench", &viewer).0, 403);
    assert_eq!(get(port, "/api/workbench/metrics", &viewer).0, 403);
    assert_eq!(
        get(port, "/api/workbench/check", &[]).0,
        401,
        "no token: nothing"
    );
    assert!(
        !file.with_file_name("interactions.toml.bak").exists(),
        "nothing saved"
    );

    // The editor, in a real browser.
    let (mut driver, driver_port) = common::chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let client = common::browser(driver_port, profile.path(), &[]).await;
    let outcome = browser_flow(&client, port, (data, file, records)).await;
    let _ = client.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
    outcome.unwrap();

    // The change is recorded under the editor's name, readable by a viewer.
    let (status, body) = get(port, "/api/changes", &viewer);
    assert_eq!(status, 200, "{body}");
    let changes: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(changes[0]["who"], "edith", "{changes}");
    assert_eq!(changes[0]["metric"], "purchases_per_item");
    assert!(
        changes[0]["diff"]
            .as_str()
            .unwrap()
            .contains("+name = \"purchases_per_item\""),
        "{changes}"
    );
    // On disk: the pipeline file holds the metric and still validates; the old one is kept.
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains("name = \"purchases_per_item\""), "{text}");
    assert!(file.with_file_name("interactions.toml.bak").exists());
    let validate = common::runner()
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
}

async fn browser_flow(
    client: &fantoccini::Client,
    port: u16,
    (data, file, records): (&Path, &Path, &Path),
) -> Result<(), fantoccini::error::CmdError> {
    use fantoccini::Locator;
    let wait_for = |script: &'static str, what: &'static str| async move {
        let t = Instant::now();
        loop {
            let v = client.execute(script, vec![]).await?;
            if v != Value::Null && v != Value::Bool(false) {
                return Ok::<Value, fantoccini::error::CmdError>(v);
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "waited 30 s for {what}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // Opened as a link with the editor's token would be; the cookie carries it after.
    client
        .goto(&format!("http://127.0.0.1:{port}/?token=ed1tor-secret"))
        .await?;
    client
        .find(Locator::Css("a.workbench-link"))
        .await?
        .click()
        .await?;
    wait_for(
        "return document.getElementById('pick').options.length > 5;",
        "the metrics to load",
    )
    .await?;
    // A new metric: its name in the form, its script typed into the editor with a typo on line 3.
    client
        .find(Locator::Id("f-name"))
        .await?
        .send_keys("purchases_per_item")
        .await?;
    // Records arrive while the metric is written, up to the try (so the current window holds
    // records from before the save, whatever the minute).
    let before = Trickle::start(records, "before");
    let content = client.find(Locator::Css(".cm-content")).await?;
    content.click().await?;
    // Ctrl+A and Backspace clear the starter script; then each line is typed, Enter between
    // (the editor indents the next line itself).
    let (select_all, backspace, enter) = ("\u{e009}a\u{e000}", "\u{e003}", "\u{e007}");
    let type_script = |text: String| {
        let content = content.clone();
        async move {
            content.send_keys(select_all).await?;
            content.send_keys(backspace).await?;
            for line in text.lines() {
                content.send_keys(line.trim_start()).await?;
                content.send_keys(enter).await?;
            }
            Ok::<_, fantoccini::error::CmdError>(())
        }
    };
    type_script(SCRIPT.replace("\"interaction_type\",", "\"interaction_type\"")).await?;
    let problem = wait_for(
        "const c = document.getElementById('check'); return c.classList.contains('bad') && c.textContent;",
        "the typo's problem",
    )
    .await?;
    assert!(
        problem
            .as_str()
            .unwrap()
            .contains("purchases_per_item.rhai:3:"),
        "the typo is placed on line 3: {problem}"
    );
    let underlined = wait_for(
        "const u = document.querySelector('.cm-lintRange-error'); return u && u.closest('.cm-line').textContent;",
        "the typo underlined",
    )
    .await?;
    assert!(
        underlined.as_str().unwrap().contains("field_is"),
        "the typo's line is underlined: {underlined}"
    );
    type_script(SCRIPT.to_string()).await?;
    wait_for(
        "const c = document.getElementById('check'); return c.classList.contains('good');",
        "the fixed script to compile",
    )
    .await?;
    // Try: the current window's value, and every window of the chart, equal what the stored
    // records count.
    let before_end = chrono::Utc::now().timestamp_millis();
    let mut appended = before.stop();
    stored(port, HISTORY + appended).await;
    client.find(Locator::Id("try")).await?.click().await?;
    let tried = wait_for(
        "const v = document.getElementById('tried-value').dataset; return !document.getElementById('tried').hidden && v.value ? [v.value, Number(v.start), Number(v.end), document.getElementById('tried-chart').dataset.series] : null;",
        "the try's value",
    )
    .await?;
    let shown: Value = serde_json::from_str(tried[0].as_str().unwrap()).unwrap();
    let window = (tried[1].as_i64().unwrap(), tried[2].as_i64().unwrap());
    assert_eq!(
        shown,
        recount(data, file, window).await,
        "the current window"
    );
    let series: Value = serde_json::from_str(tried[3].as_str().unwrap()).unwrap();
    let mut purchases = 0;
    for point in series.as_array().unwrap() {
        let end = point["end"].as_i64().unwrap();
        assert_eq!(
            point["value"],
            recount(data, file, (end - 60_000, end)).await,
            "window ending {end}"
        );
        purchases += point["value"].as_object().unwrap().len();
    }
    assert!(purchases > 0, "the chart has purchases: {series}");
    let desktop = common::repo_root().join("target/workbench-desktop.png");
    std::fs::write(&desktop, client.screenshot().await?).unwrap();
    // Live traffic goes on from here (a new metric meets each partition with its next record,
    // and is filled from history from there).
    let live_from = chrono::Utc::now().timestamp_millis();
    let live = Trickle::start(records, "after");
    // Save: the page links to the metric on the dashboard, where it shows, filled from history.
    client.find(Locator::Id("save")).await?.click().await?;
    wait_for(
        "return !!document.getElementById('saved-open');",
        "the save",
    )
    .await?;
    client
        .find(Locator::Id("saved-open"))
        .await?
        .click()
        .await?;
    let t = Instant::now();
    let panel = loop {
        client.refresh().await?;
        let v = client
            .execute(
                "const p = document.querySelector('[data-metric=purchases_per_item]'); return p ? p.textContent : null;",
                vec![],
            )
            .await?;
        if let Some(text) = v
            .as_str()
            .filter(|t| t.contains("item_") && !t.contains("backfilling"))
        {
            break text.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(45),
            "the saved metric did not show with values on the dashboard: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Full: once the live records stop, the current window holds every stored record of it,
    // those from before the save (backfilled from history) and the live ones after.
    appended += live.stop();
    stored(port, HISTORY + appended).await;
    let t = Instant::now();
    loop {
        let (_, body) = get(
            port,
            "/api/metrics",
            &[("Authorization", "Bearer ed1tor-secret")],
        );
        let all: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let shown = all
            .as_array()
            .and_then(|a| a.iter().find(|m| m["name"] == "purchases_per_item"))
            .cloned()
            .unwrap_or(Value::Null);
        let window = (
            shown["window_start"].as_i64().unwrap_or(0),
            shown["window_end"].as_i64().unwrap_or(0),
        );
        let expected = recount(data, file, window).await;
        if shown["value"] == expected && shown.get("backfilling").is_none() {
            let before_save = recount(data, file, (window.0, live_from)).await;
            assert!(
                window.0 > before_end || before_save.as_object().is_some_and(|m| !m.is_empty()),
                "the window holds records from before the save, filled from history: {shown}"
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the dashboard's current window never held every stored record of it: shows {shown}, the store has {expected}; panel: {panel}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Phone width: the workbench in one column, nothing wider than the screen.
    client
        .goto(&format!(
            "http://127.0.0.1:{port}/workbench?metric=purchases_per_item"
        ))
        .await?;
    client.set_window_size(390, 844).await?;
    wait_for(
        "return document.getElementById('f-name').value === 'purchases_per_item';",
        "the saved metric in the workbench",
    )
    .await?;
    let phone: Value = client
        .execute(
            "return [getComputedStyle(document.getElementById('workbench')).gridTemplateColumns.split(' ').length, document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await?;
    assert_eq!(phone[0], 1, "one column on a phone: {phone}");
    assert!(
        phone[1].as_i64() <= phone[2].as_i64(),
        "wider than a phone's screen: {phone}"
    );
    let phone_png = common::repo_root().join("target/workbench-phone.png");
    std::fs::write(&phone_png, client.screenshot().await?).unwrap();
    println!(
        "screenshots at {} and {}",
        desktop.display(),
        phone_png.display()
    );
    Ok(())
}
