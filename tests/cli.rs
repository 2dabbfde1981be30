//! The runner binary as an operator drives it: reload on SIGHUP, polling for changes where the
//! file system sends no events, and `runner metrics` reading what a run stored.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `runner run` child on the embedded default with JSON logs, and its log lines as they come.
struct Running {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Running {
    fn start(pipeline: &std::path::Path, data: &std::path::Path, extra: &[&str]) -> Running {
        let mut child = common::runner()
            .args([
                "run",
                pipeline.to_str().unwrap(),
                "--components",
                "generator,consumer",
                "--log-format",
                "json",
            ])
            .args(extra)
            .env("RUNNER_DATA_DIR", data)
            .env("DEFAULT_GENERATION_RATE", "200")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Running { child, lines }
    }

    /// Waits up to `limit` for a log line whose message contains `text`.
    fn wait_for(&self, text: &str, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v)
                    if v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(text)) =>
                {
                    return true
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops it as Ctrl-C would and checks it exits cleanly.
    fn stop(mut self) {
        self.signal("INT");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

fn edit_rate(pipeline: &std::path::Path, rate: u32) {
    let text = std::fs::read_to_string(pipeline).unwrap();
    let edited = text.replace(
        "rate = \"${DEFAULT_GENERATION_RATE:-1000}\"",
        &format!("rate = {rate}"),
    );
    assert_ne!(
        text, edited,
        "the shipped file sets the rate where this test expects it"
    );
    std::fs::write(pipeline, edited).unwrap();
}

#[test]
fn sighup_reloads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = common::copy_pipeline(dir.path());
    let run = Running::start(&pipeline, &dir.path().join("data"), &["--no-watch"]);
    assert!(
        run.wait_for("transport:", Duration::from_secs(20)),
        "the runner started"
    );
    edit_rate(&pipeline, 300);
    assert!(
        !run.wait_for("reloaded", Duration::from_secs(2)),
        "with --no-watch an edit alone reloads nothing"
    );
    run.signal("HUP");
    assert!(
        run.wait_for("reloaded", Duration::from_secs(10)),
        "SIGHUP reloads the edited file"
    );
    run.stop();
}

#[test]
fn watch_poll_notices_changes_without_file_events() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = common::copy_pipeline(dir.path());
    // --no-watch stands in for a file system that sends no change events.
    let run = Running::start(
        &pipeline,
        &dir.path().join("data"),
        &["--no-watch", "--watch-poll", "300ms"],
    );
    assert!(
        run.wait_for("transport:", Duration::from_secs(20)),
        "the runner started"
    );
    edit_rate(&pipeline, 300);
    assert!(
        run.wait_for("reloaded", Duration::from_secs(5)),
        "the periodic check finds the edit"
    );
    run.stop();
}

/// `runner metrics` reads the windows a run stored: every shipped metric, and the counts by
/// type add up to exactly the events just generated.
#[test]
fn runner_metrics_reads_what_a_run_stored() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = common::shipped_pipeline();
    let events = 3_000u64;
    let out = common::runner()
        .args([
            "run",
            shipped.to_str().unwrap(),
            "--components",
            "generator,consumer",
            "--events",
            &events.to_string(),
        ])
        .env("RUNNER_DATA_DIR", dir.path())
        .env("DEFAULT_GENERATION_RATE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::runner()
        .args(["metrics", shipped.to_str().unwrap(), "--json"])
        .env("RUNNER_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let shipped_count = common::load_pipeline(&[]).config.metrics.len();
    assert_eq!(values.len(), shipped_count, "{values:#?}");
    let by_type = &values
        .iter()
        .find(|v| v["name"] == "interaction_types")
        .unwrap()["value"];
    let total: u64 = by_type
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, events, "{by_type}");
    let table = common::runner()
        .args(["metrics", shipped.to_str().unwrap()])
        .env("RUNNER_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("metric") && text.contains("active_users"),
        "{text}"
    );
}

/// The seed's own invocations: space-separated components, `all`, `alerting` on its own, and a
/// refresh interval in bare seconds from the environment.
#[test]
fn seed_command_line_works() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = common::shipped_pipeline();
    let shipped = shipped.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = common::runner()
            .args(["run", shipped])
            .args(args)
            .env("RUNNER_DATA_DIR", dir.path())
            .env("DEFAULT_GENERATION_RATE", "0")
            .env("DASHBOARD_REFRESH_INTERVAL", "5")
            .env(
                "DASHBOARD_LISTEN",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "runner run {args:?} failed: {err}");
        err
    };
    let err = run(&["--components", "producer", "consumer", "--events", "500"]);
    assert!(
        err.contains("generator=true") && err.contains("consumer=true"),
        "{err}"
    );
    run(&["--components", "all", "--events", "500", "--for", "3"]);
    run(&["--components", "alerting", "--for", "2"]);
    let out = common::runner()
        .args(["validate", shipped])
        .env("DASHBOARD_REFRESH_INTERVAL", "5")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = common::load_pipeline(&[("DASHBOARD_REFRESH_INTERVAL", "5")]).config;
    assert_eq!(
        c.dashboard.refresh,
        Duration::from_secs(5),
        "a bare number is seconds"
    );
}

/// A dashboard that would listen beyond loopback without a token does not start: the run
/// fails naming the keys to set; with a token, or `allow_anonymous`, it serves.
#[test]
fn a_dashboard_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = common::shipped_pipeline();
    let run = |env: &[(&str, &str)]| {
        common::runner()
            .args([
                "run",
                shipped.to_str().unwrap(),
                "--components",
                "dashboard",
                "--for",
                "2",
            ])
            .env("RUNNER_DATA_DIR", dir.path())
            .env(
                "DASHBOARD_LISTEN",
                format!("0.0.0.0:{}", common::free_port()),
            )
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("dashboard.token") && err.contains("allow_anonymous"),
        "{err}"
    );
    let with_token = run(&[("DASHBOARD_TOKEN", "s3cret")]);
    assert!(
        with_token.status.success(),
        "{}",
        String::from_utf8_lossy(&with_token.stderr)
    );
}
