//! The dashboard under load: a runner process at a steady rate, first with nobody watching, then
//! with many live viewers (server-sent event streams) and a steady rate of API requests. What
//! matters: the pipeline stores as fast with viewers as without, the API answers quickly, every
//! viewer receives every refresh, and the runner's memory stays flat.

use super::{figure, Figure};
use anyhow::Context;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How hard to load it.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Events per second the runner generates and consumes.
    pub rate: f64,
    /// Live viewers (open `/events` streams) in the loaded phase.
    pub clients: usize,
    /// API requests per second in the loaded phase (open loop: a slow answer does not slow the
    /// requests after it).
    pub api_per_s: f64,
    /// Length of each phase.
    pub phase: Duration,
    /// Before the first phase: long enough for the metrics' windows to fill (window + lateness +
    /// slide), so memory measured after it is the steady state.
    pub warmup: Duration,
}

/// What one load check measured.
#[derive(Debug, Clone, Default)]
pub struct LoadOutcome {
    /// Events stored per second with no viewer, and with the load.
    pub stored_idle: f64,
    pub stored_loaded: f64,
    /// API latency (p50, p99, ms): a light probe with no viewer, and the loaded phase.
    pub api_idle_ms: (f64, f64),
    pub api_loaded_ms: (f64, f64),
    /// The slowest API answers of the loaded phase: (route, ms).
    pub slowest: Vec<(String, f64)>,
    /// API requests sent in the loaded phase, and how many failed or were not 200.
    pub api_requests: usize,
    pub api_failures: usize,
    /// Viewers that connected and stayed connected to the end.
    pub clients_ok: usize,
    /// Fewest refreshes a viewer received in the measured window.
    pub frames_min: u64,
    /// Refreshes viewers missed (gaps in the sequence ids), summed over all of them.
    pub frames_missed: u64,
    /// Renders running while loaded (one per range and metric filter viewed).
    pub feeds: f64,
    /// Runner resident memory (MB), sampled every second: the median over the idle phase, over
    /// the first and the last quarter of the measured load, and the highest sample under load.
    /// One sample each said little: the allocator gives memory back every few seconds, so a
    /// single reading swings by a hundred megabytes either way.
    pub rss_idle_mb: f64,
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
    pub rss_peak_mb: f64,
}

/// The runner under test; killed when dropped.
struct Runner {
    child: Child,
    base: String,
    data: std::path::PathBuf,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The resident memory of process `pid`, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Samples `pid`'s resident memory every second while `during` runs.
async fn sampling_rss<T>(pid: u32, during: impl std::future::Future<Output = T>) -> (T, Vec<f64>) {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(during);
    loop {
        tokio::select! {
            out = &mut during => return (out, samples),
            _ = tick.tick() => samples.push(rss_mb(pid)),
        }
    }
}

/// The `q` quantile of `values` (nearest rank; NaN when empty).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n => v[((n - 1) as f64 * q).round() as usize],
    }
}

fn median(samples: &[f64]) -> f64 {
    quantile(samples, 0.5)
}

/// A sample of `/metrics` by name (first sample of each).
async fn scrape(client: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let body = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("/metrics has no {name}"))
}

/// Starts `exe run pipeline` on the embedded transport and store at `spec.rate`, and waits
/// until it stores events.
async fn start(
    exe: &Path,
    pipeline: &Path,
    rate: f64,
    client: &reqwest::Client,
) -> anyhow::Result<Runner> {
    let data = super::scratch_path("-dashboard");
    std::fs::create_dir_all(&data)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(exe)
        .arg("run")
        .arg(pipeline)
        .args([
            "--kafka",
            "embedded",
            "--mongodb",
            "embedded",
            "--no-watch",
            "--progress-every",
            "1h",
        ])
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--generation-rate",
            &rate.to_string(),
            "--dashboard-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUNNER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let runner = Runner {
        child,
        base: format!("http://127.0.0.1:{port}"),
        data,
    };
    let t = Instant::now();
    while scrape(client, &runner.base, "runner_events_stored_total")
        .await
        .unwrap_or(0.0)
        <= 0.0
    {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "the runner stored nothing within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(runner)
}

/// The API routes a monitoring client asks for, in turn.
const ROUTES: [&str; 4] = [
    "/api/metrics",
    "/api/health",
    "/api/topology",
    "/api/metrics/active_users/history?range=1h",
];

/// Sends `per_s` requests a second for `length`, each on its own task; returns the latencies
/// (ms) of those answered 200 with their route, and how many were sent.
async fn api_load(
    client: &reqwest::Client,
    base: &str,
    per_s: f64,
    length: Duration,
) -> (Vec<(f64, &'static str)>, usize) {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut sent = Vec::new();
    let every = Duration::from_secs_f64(1.0 / per_s.max(0.01));
    let mut tick = tokio::time::interval(every);
    let end = Instant::now() + length;
    let mut n = 0;
    while Instant::now() < end {
        tick.tick().await;
        let route = ROUTES[n % ROUTES.len()];
        let (client, url, latencies) =
            (client.clone(), format!("{base}{route}"), latencies.clone());
        n += 1;
        sent.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = match client.get(url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                latencies
                    .lock()
                    .unwrap()
                    .push((t.elapsed().as_secs_f64() * 1000.0, route));
            }
        }));
    }
    for s in sent {
        let _ = s.await;
    }
    let l = latencies.lock().unwrap().clone();
    (l, n)
}

fn p50_p99(v: &[(f64, &str)]) -> (f64, f64) {
    let ms: Vec<f64> = v.iter().map(|l| l.0).collect();
    (quantile(&ms, 0.5), quantile(&ms, 0.99))
}

/// The sequence ids of the refreshes a viewer received, with when each arrived.
type Received = Arc<Mutex<Vec<(Instant, u64)>>>;

/// One viewer: records what it receives until the stream ends.
async fn viewer(client: reqwest::Client, url: String, seen: Received) -> bool {
    let Ok(resp) = client.get(url).send().await else {
        return false;
    };
    if !resp.status().is_success() {
        return false;
    }
    let mut resp = resp;
    let mut line = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        for &b in chunk.iter() {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            if let Some(id) = line.strip_prefix(b"id:") {
                if let Ok(id) = std::str::from_utf8(id).unwrap_or("").trim().parse() {
                    seen.lock().unwrap().push((Instant::now(), id));
                }
            }
            line.clear();
        }
    }
    true
}

/// Between connecting the viewers and measuring: every one has its first frame.
const VIEWERS_SETTLE: Duration = Duration::from_secs(3);

/// Runs the check: warm-up, the idle phase, then viewers and API load.
pub async fn load_check(
    exe: &Path,
    pipeline: &Path,
    spec: &LoadSpec,
) -> anyhow::Result<LoadOutcome> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.clients + 64)
        .timeout(Duration::from_secs(30))
        .build()?;
    let runner = start(exe, pipeline, spec.rate, &client).await?;
    let base = runner.base.clone();
    let mut out = LoadOutcome::default();
    tokio::time::sleep(spec.warmup).await;

    // Nobody watching: the stored rate, and the API's latency under a light probe (2/s).
    let s0 = scrape(&client, &base, "runner_events_stored_total").await?;
    let t0 = Instant::now();
    let pid = runner.child.id();
    let ((idle, _), idle_rss) = sampling_rss(pid, api_load(&client, &base, 2.0, spec.phase)).await;
    out.stored_idle = (scrape(&client, &base, "runner_events_stored_total").await? - s0)
        / t0.elapsed().as_secs_f64();
    out.api_idle_ms = p50_p99(&idle);
    out.rss_idle_mb = median(&idle_rss);

    // The viewers connect, settle, then the measured window with the API load.
    let streams = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.clients + 8)
        .build()?;
    let seen: Vec<Received> = (0..spec.clients).map(|_| Arc::default()).collect();
    let viewers: Vec<_> = seen
        .iter()
        .map(|s| {
            tokio::spawn(viewer(
                streams.clone(),
                format!("{base}/events?range=5m"),
                s.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(VIEWERS_SETTLE).await;
    let s0 = scrape(&client, &base, "runner_events_stored_total").await?;
    let window_start = Instant::now();
    let ((loaded, sent), loaded_rss) =
        sampling_rss(pid, api_load(&client, &base, spec.api_per_s, spec.phase)).await;
    let quarter = (loaded_rss.len() / 4).max(1);
    out.rss_start_mb = median(&loaded_rss[..quarter.min(loaded_rss.len())]);
    out.rss_end_mb = median(&loaded_rss[loaded_rss.len().saturating_sub(quarter)..]);
    out.rss_peak_mb = loaded_rss.iter().copied().fold(0.0, f64::max);
    let window_end = Instant::now();
    out.stored_loaded = (scrape(&client, &base, "runner_events_stored_total").await? - s0)
        / window_start.elapsed().as_secs_f64();
    out.api_loaded_ms = p50_p99(&loaded);
    let mut slowest = loaded.clone();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.slowest = slowest
        .into_iter()
        .take(5)
        .map(|(ms, route)| (route.to_string(), ms))
        .collect();
    out.api_requests = sent;
    out.api_failures = sent - loaded.len();
    out.feeds = scrape(&client, &base, "runner_dashboard_feeds")
        .await
        .unwrap_or(f64::NAN);
    let viewers_still_open = viewers.iter().filter(|v| !v.is_finished()).count();
    drop(runner);
    for v in viewers {
        let _ = v.await;
    }
    out.clients_ok = viewers_still_open;
    out.frames_min = u64::MAX;
    for s in &seen {
        let s = s.lock().unwrap();
        let ids: Vec<u64> = s
            .iter()
            .filter(|(at, _)| *at >= window_start && *at <= window_end)
            .map(|(_, id)| *id)
            .collect();
        out.frames_min = out.frames_min.min(ids.len() as u64);
        let all: Vec<u64> = s.iter().map(|(_, id)| *id).collect();
        out.frames_missed += all
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0] + 1))
            .sum::<u64>();
    }
    if seen.is_empty() {
        out.frames_min = 0;
    }
    Ok(out)
}

/// `runner bench --only dashboard`: the shipped rate of the issue (10,000 events/s, 200 viewers,
/// 50 API requests/s, 60 s phases) on the embedded default.
pub async fn dashboard_section(
    pipeline: &crate::config::Pipeline,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let spec = LoadSpec {
        rate: 10_000.0,
        clients: 200,
        api_per_s: 50.0,
        phase: Duration::from_secs(60),
        warmup: Duration::from_secs(75),
    };
    tracing::info!(
        ?spec,
        "bench: dashboard under load (about {} s)",
        (spec.phase * 2 + spec.warmup + VIEWERS_SETTLE).as_secs()
    );
    let exe = std::env::current_exe().context("bench: cannot find the runner binary")?;
    let o = load_check(&exe, &pipeline.path, &spec).await?;
    let idle = "dashboard: stored events/s, no viewer";
    figures.push(figure(idle, "events/s", vec![o.stored_idle]));
    figures.push(figure(
        "dashboard: stored events/s, 200 viewers + 50 API req/s",
        "events/s",
        vec![o.stored_loaded],
    ));
    super::compare(
        figures,
        "dashboard: stored events/s, 200 viewers + 50 API req/s",
        idle,
    );
    figures.push(figure(
        "dashboard: API p50, no viewer (ms)",
        "ms",
        vec![o.api_idle_ms.0],
    ));
    figures.push(figure(
        "dashboard: API p99, no viewer (ms)",
        "ms",
        vec![o.api_idle_ms.1],
    ));
    figures.push(figure(
        "dashboard: API p50, loaded (ms)",
        "ms",
        vec![o.api_loaded_ms.0],
    ));
    figures.push(figure(
        "dashboard: API p99, loaded (ms)",
        "ms",
        vec![o.api_loaded_ms.1],
    ));
    figures.push(figure(
        "dashboard: API requests failed",
        "requests",
        vec![o.api_failures as f64],
    ));
    figures.push(figure(
        "dashboard: viewers connected to the end",
        "viewers",
        vec![o.clients_ok as f64],
    ));
    figures.push(figure(
        "dashboard: fewest refreshes a viewer got in 60 s",
        "refreshes",
        vec![o.frames_min as f64],
    ));
    figures.push(figure(
        "dashboard: refreshes missed, all viewers",
        "refreshes",
        vec![o.frames_missed as f64],
    ));
    figures.push(figure(
        "dashboard: renders running (feeds)",
        "feeds",
        vec![o.feeds],
    ));
    figures.push(figure(
        "dashboard: runner RSS, no viewer (median of 1 s samples)",
        "MB",
        vec![o.rss_idle_mb],
    ));
    let start = "dashboard: runner RSS, first quarter of the load (median)";
    figures.push(figure(start, "MB", vec![o.rss_start_mb]));
    figures.push(figure(
        "dashboard: runner RSS, last quarter of the load (median)",
        "MB",
        vec![o.rss_end_mb],
    ));
    figures.push(figure(
        "dashboard: runner RSS, highest sample under load",
        "MB",
        vec![o.rss_peak_mb],
    ));
    super::compare(
        figures,
        "dashboard: runner RSS, last quarter of the load (median)",
        start,
    );
    Ok(())
}
