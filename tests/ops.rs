//! The tools operators already use, for real: Debian's `prometheus` scraping a running runner
//! and answering queries, `promtool check metrics` on its `/metrics`, the shipped Grafana
//! dashboard asking only for metrics the runner serves, and `runner top` in a real terminal
//! (tmux), its numbers moving.

mod common;

use common::get;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `runner run` of the shipped pipeline on the embedded default, its dashboard on `port`.
struct Runner {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_runner() -> Runner {
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let child = common::runner()
        .args(["run", common::shipped_pipeline().to_str().unwrap()])
        .env("RUNNER_DATA_DIR", data.path())
        .env("DASHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("DEFAULT_GENERATION_RATE", "500")
        .env("RUNNER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let runner = Runner {
        child,
        port,
        _data: data,
    };
    wait_until(
        Duration::from_secs(30),
        "the runner to store events",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && stored(port) > 0.0,
    );
    runner
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `runner_events_stored_total` as the runner serves it.
fn stored(port: u16) -> f64 {
    let (_, body) = get(port, "/metrics", &[]);
    body.lines()
        .find_map(|l| l.strip_prefix("runner_events_stored_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs a Debian package's program; a missing one fails the test with how to get it.
fn tool(name: &str) -> Command {
    let path = format!("/usr/bin/{name}");
    assert!(std::path::Path::new(&path).exists(), "{path} is missing: `scripts/services.sh install` installs it (Debian packages prometheus and tmux)");
    Command::new(path)
}

#[test]
fn promtool_accepts_the_metrics_page() {
    let runner = start_runner();
    let (code, body) = get(runner.port, "/metrics", &[]);
    assert_eq!(code, 200);
    let mut check = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}\n{body}",
        out.status
    );
}

/// Asks Prometheus's query API; the first sample's value, if any.
fn query(port: u16, promql: &str) -> Option<f64> {
    std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let q: String = serde_urlencoded::to_string([("query", promql)]).unwrap();
    let (code, body) = get(port, &format!("/api/v1/query?{q}"), &[]);
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_runner_and_answers_queries() {
    let runner = start_runner();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: runner\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n", runner.port),
    )
    .unwrap();
    let port = common::free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut prometheus = tool("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let outcome = std::panic::catch_unwind(|| {
        wait_until(
            Duration::from_secs(60),
            "Prometheus to have scraped events stored",
            || query(port, "runner_events_stored_total").is_some_and(|v| v > 0.0),
        );
        let first = query(port, "runner_events_stored_total").unwrap();
        wait_until(
            Duration::from_secs(30),
            "a metric value through Prometheus",
            || query(port, r#"runner_metric{name="active_users"}"#).is_some_and(|v| v > 0.0),
        );
        // Later scrapes see the counter grow, and a rate over them is the generator's pace.
        wait_until(
            Duration::from_secs(30),
            "the stored counter to grow between scrapes",
            || query(port, "runner_events_stored_total").is_some_and(|v| v > first),
        );
        wait_until(Duration::from_secs(30), "a rate", || {
            query(port, "rate(runner_events_stored_total[5s])")
                .is_some_and(|r| r > 100.0 && r < 2000.0)
        });
        let (_, targets) = get(port, "/api/v1/targets", &[]);
        assert!(targets.contains(r#""health":"up""#), "{targets}");
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    if let Err(e) = outcome {
        eprintln!(
            "{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::panic::resume_unwind(e);
    }
}

/// Every `runner_…` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("runner_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every `expr` and variable query of a Grafana dashboard.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains("runner_") => {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_asks_only_for_metrics_the_runner_serves() {
    let file = common::repo_root().join("deploy/grafana/runner.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .expect("deploy/grafana/runner.json is JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let runner = start_runner();
    let (_, body) = get(runner.port, "/metrics", &[]);
    // Served names: every sample and every declared family (a family may have no sample yet).
    let served: std::collections::BTreeSet<String> = body
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split_whitespace().next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_string)
        .collect();
    let mut asked = std::collections::BTreeSet::new();
    for e in &exprs {
        asked.extend(metric_names(e));
    }
    let missing: Vec<&String> = asked.iter().filter(|n| !served.contains(*n)).collect();
    assert!(missing.is_empty(), "the Grafana dashboard queries metrics /metrics does not serve: {missing:?}\nserved: {served:?}");
    // The dashboard covers what operators need: rates, lag, each numeric metric, alerts.
    for needed in [
        "runner_events_stored_total",
        "runner_consumer_lag",
        "runner_metric",
        "runner_alerts",
    ] {
        assert!(asked.contains(needed), "no panel asks for {needed}");
    }
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(
        panels.iter().any(|p| p["repeat"] == "metric"),
        "one panel per numeric metric (repeated over the metric variable)"
    );
}

/// The `generated` row of a captured `runner top` screen: (rate, total).
fn generated_row(screen: &str) -> Option<(f64, u64)> {
    let line = screen.lines().find(|l| l.contains("generated "))?;
    let mut cells = line
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .split_whitespace()
        .skip(1);
    let rate = cells.next()?.trim_end_matches("/s").parse().ok()?;
    let total = cells
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((rate, total))
}

#[test]
fn runner_top_shows_moving_numbers_in_a_real_terminal() {
    let runner = start_runner();
    // A tmux server of this test's own (its own socket), so nothing else running in tmux is touched.
    let socket = common::unique("top");
    let tmux = |args: &[&str]| {
        let out = tool("tmux")
            .arg("-L")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let command = format!(
        "{} top --url http://127.0.0.1:{} --interval 500ms",
        env!("CARGO_BIN_EXE_runner"),
        runner.port
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "45",
        &command,
    ]);
    let capture = || tmux(&["capture-pane", "-p", "-t", "top"]);
    let outcome = std::panic::catch_unwind(|| {
        let mut first = None;
        wait_until(
            Duration::from_secs(20),
            "runner top to draw the flow",
            || {
                first = generated_row(&capture());
                first.is_some()
            },
        );
        let screen = capture();
        for shown in [
            "runner top",
            "active_users",
            "interaction_types",
            "alerts (",
            "where events leave the flow",
        ] {
            assert!(screen.contains(shown), "{shown:?} not on screen:\n{screen}");
        }
        let (_, total0) = first.unwrap();
        let mut later = None;
        wait_until(Duration::from_secs(20), "the totals to move", || {
            later =
                generated_row(&capture()).filter(|(rate, total)| *total > total0 && *rate > 0.0);
            later.is_some()
        });
        let (rate, _) = later.unwrap();
        assert!(
            rate > 100.0 && rate < 2000.0,
            "generated {rate}/s at a 500/s generator:\n{}",
            capture()
        );
        tmux(&["send-keys", "-t", "top", "q"]);
        wait_until(Duration::from_secs(5), "q to quit runner top", || {
            !tmux(&["list-sessions"]).contains("top:")
        });
    });
    tmux(&["kill-server"]);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
