//! Alerting end to end: real delivery to an SMTP server (aiosmtpd) and an HTTP receiver, the
//! shipped rules firing and resolving on traffic through Kafka, and no re-send after a restart.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{free_port, set_alerts, wait_for_port};
use runner::alert::{self, Notification};
use runner::config::Pipeline;
use runner::pipeline::{self, Components, RunOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Runs `p` with a generator of `events` until idle for 2 s (at most 90 s).
async fn run_briefly(p: &Pipeline, events: u64) -> runner::pipeline::RunSummary {
    let stop = CancellationToken::new();
    let guard = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(90)).await;
        guard.cancel();
    });
    let options = RunOptions {
        max_events: Some(events),
        idle_exit: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    pipeline::run(p, options, stop).await.expect("pipeline run")
}

/// Runs `p` with 500 events/s until `done` holds, one more second to catch anything sent after
/// it, then stops it (at most 60 s).
async fn run_until(p: &Pipeline, done: impl Fn() -> bool) -> runner::pipeline::RunSummary {
    let stop = CancellationToken::new();
    let mut p = p.clone();
    p.config.generator.rate = 500.0;
    let running = pipeline::start(p, RunOptions::default(), stop.clone())
        .await
        .expect("pipeline starts");
    let t = Instant::now();
    while !done() && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    running.wait().await.expect("pipeline run")
}

/// One rule, `traffic` (holds while anyone is active), evaluated every `interval` and sent to a
/// webhook at `url`; `channel` and `rule` add keys to the channel and the rule.
fn traffic_to_webhook(p: &mut Pipeline, url: &str, interval: &str, channel: &str, rule: &str) {
    let text = format!(
        "[alerting]\ninterval = \"{interval}\"\n[alerting.channels.hook]\ntype = \"webhook\"\nurl = \"{url}\"\n{channel}\n\
         [[alert]]\nname = \"traffic\"\ncondition = \"metrics.active_users > 0\"\nchannels = [\"hook\"]\n{rule}\n"
    );
    set_alerts(p, &text);
}

/// A webhook receiver: answers 500 to the first `fail_first` requests, then 200, and keeps
/// every request (its Idempotency-Key and body) with the status it answered.
#[derive(Default)]
struct Receiver {
    fail_first: Mutex<u32>,
    requests: Mutex<Vec<(String, u16, serde_json::Value)>>,
}

impl Receiver {
    async fn start(fail_first: u32) -> (Arc<Receiver>, String) {
        let r = Arc::new(Receiver {
            fail_first: Mutex::new(fail_first),
            ..Default::default()
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    /// Bodies of the requests answered 200.
    fn delivered(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.1 == 200)
            .map(|r| r.2.clone())
            .collect()
    }
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let mut fail = r.fail_first.lock().unwrap();
    let status = if *fail > 0 {
        *fail -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    r.requests
        .lock()
        .unwrap()
        .push((key, status.as_u16(), json));
    status
}

/// An aiosmtpd server on a free port, saving every message into a Maildir; stopped on drop.
struct Smtpd {
    child: std::process::Child,
    maildir: tempfile::TempDir,
    port: u16,
}

impl Smtpd {
    async fn start() -> Smtpd {
        let python = std::env::var("RUNNER_TEST_SMTPD_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|_| common::repo_root().join(".services/venv/bin/python"));
        let maildir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = std::process::Command::new(&python)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            // Maildir creates its layout only for a folder that does not exist yet.
            .arg(maildir.path().join("mail"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start aiosmtpd with {} ({e}); scripts/services.sh install sets it up",
                    python.display()
                )
            });
        wait_for_port(port).await;
        Smtpd {
            child,
            maildir,
            port,
        }
    }

    /// Every message received so far, as raw RFC 5322 text.
    fn messages(&self) -> Vec<String> {
        let new = self.maildir.path().join("mail/new");
        let mut out: Vec<String> = std::fs::read_dir(&new)
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_alert_delivered() {
    let smtpd = Smtpd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    set_alerts(
        &mut p,
        &format!(
            r#"
            [alerting]
            interval = "300ms"
            [alerting.thresholds]
            min_users = 1
            [alerting.channels.oncall]
            type = "email"
            host = "127.0.0.1"
            port = {port}
            security = "none"
            from = "runner alerts <alerts@runner.test>"
            to = ["oncall@runner.test", "lead@runner.test"]
            [[alert]]
            name = "users_active"
            condition = "if metrics.active_users >= thresholds.min_users {{ #{{ value: metrics.active_users }} }} else {{ false }}"
            severity = "critical"
            channels = ["oncall"]
            message = "{{{{ value | int }}}} users active (threshold {{{{ thresholds.min_users }}}})"
            description = "Fires as soon as anyone is active."
            "#,
            port = smtpd.port
        ),
    );
    run_until(&p, || !smtpd.messages().is_empty()).await;
    let messages = smtpd.messages();
    assert_eq!(
        messages.len(),
        1,
        "one firing notification, one email: {messages:#?}"
    );
    let mail = &messages[0];
    println!("--- received by aiosmtpd ---\n{mail}\n--- end ---");
    let header = |name: &str| {
        mail.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} header in\n{mail}"))
            .to_string()
    };
    assert_eq!(header("Subject"), "[FIRING] users_active (critical)");
    assert_eq!(header("From"), "\"runner alerts\" <alerts@runner.test>");
    let to = header("To");
    assert!(
        to.contains("oncall@runner.test") && to.contains("lead@runner.test"),
        "{to}"
    );
    // The envelope recipients, as the server saw them.
    let rcpt = header("X-RcptTo");
    assert!(
        rcpt.contains("oncall@runner.test") && rcpt.contains("lead@runner.test"),
        "{rcpt}"
    );
    let body = mail.split_once("\n\n").map(|(_, b)| b).unwrap_or_default();
    assert!(body.contains("users active (threshold 1)"), "{body}");
    assert!(
        body.contains("Fires as soon as anyone is active."),
        "{body}"
    );
    assert!(
        body.contains("alertname = users_active") && body.contains("severity = critical"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_alert_delivered() {
    let (receiver, url) = Receiver::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    traffic_to_webhook(
        &mut p,
        &url,
        "300ms",
        "headers = { X-Team = \"data\" }\nretry = { retries = 4, backoff = \"100ms\" }",
        "labels = { team = \"data\" }",
    );
    let summary = run_until(&p, || !receiver.delivered().is_empty()).await;
    let requests = receiver.requests.lock().unwrap().clone();
    let statuses: Vec<u16> = requests.iter().map(|r| r.1).collect();
    assert_eq!(
        statuses,
        [500, 500, 200],
        "two failures, then one delivery, nothing after it"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.0 == requests[0].0 && !r.0.is_empty()),
        "every retry carries the same Idempotency-Key"
    );
    let n: Notification = serde_json::from_value(receiver.delivered()[0].clone()).unwrap();
    assert_eq!(n.id, requests[0].0);
    assert_eq!((n.alert.as_str(), n.status.as_str()), ("traffic", "firing"));
    assert_eq!(n.labels.get("team").map(String::as_str), Some("data"));
    assert_eq!(
        n.labels.get("alertname").map(String::as_str),
        Some("traffic")
    );
    assert_eq!(summary.stats.notifications_sent, 1);
    assert_eq!(summary.stats.notifications_failed, 0);
}

/// The shipped pipeline's `scenario` and `rule` compressed into a minute at 1,000 events/s:
/// `metric` over 10 s windows sliding by 1 s, the scenario's change over `(start, duration)`,
/// and the rule (returned) pending for `for_`, kept firing 2 s.
fn compressed(
    p: &mut Pipeline,
    metric: &str,
    scenario: &str,
    (start, duration): (Duration, Duration),
    rule: &str,
    for_: Duration,
) -> alert::AlertConfig {
    p.config.generator.rate = 1000.0;
    let m = p
        .config
        .metrics
        .iter_mut()
        .find(|m| m.name == metric)
        .expect("a shipped metric");
    m.window = Duration::from_secs(10);
    m.slide = Some(Duration::from_secs(1));
    let s = p
        .config
        .generator
        .scenario_defs
        .iter_mut()
        .find(|s| s.name == scenario)
        .expect("a shipped scenario");
    s.changes[0].start = start;
    s.changes[0].duration = duration;
    p.config.generator.scenarios = vec![scenario.into()];
    let mut rule = p
        .config
        .alerts
        .iter()
        .find(|a| a.name == rule)
        .expect("a shipped rule")
        .clone();
    rule.for_ = for_;
    rule.keep_firing_for = Duration::from_secs(2);
    rule
}

/// The shipped viral_item scenario and high_item_interactions rule (its script and thresholds as
/// shipped; the window, evaluation and timings scaled from minutes to seconds) through Kafka and
/// MongoDB: the rule stays quiet on normal traffic, fires for item_42 while it is viral, and
/// resolves after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_fires_and_resolves() {
    let mut sp = common::service_pipeline("alerts_scenario");
    let p = &mut sp.pipeline;
    let (viral_from, viral_for) = (Duration::from_secs(25), Duration::from_secs(12));
    let rule = compressed(
        p,
        "top_items",
        "viral_item",
        (viral_from, viral_for),
        "high_item_interactions",
        Duration::from_secs(3),
    );
    p.config.alerts = vec![rule];
    p.config.alerting.interval = Duration::from_secs(1);

    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = pipeline::start(
        p.clone(),
        RunOptions {
            components: Components::ALL,
            ..Default::default()
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let store = running.store.clone().unwrap();

    // (seconds since start, item, status) of every instance seen, until item_42 has resolved.
    let mut seen: Vec<(f64, String, alert::state::Status)> = Vec::new();
    let history = loop {
        let now = started.elapsed().as_secs_f64();
        for a in alert::active_alerts(&*store).await.unwrap() {
            let item = a.labels.get("item").cloned().unwrap_or_default();
            if !seen.iter().any(|s| s.1 == item && s.2 == a.status) {
                seen.push((now, item, a.status));
            }
        }
        let history = store.recent_alerts(100).await.unwrap();
        if history.iter().any(|n| n.status == "resolved") {
            break history;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no fire-and-resolve cycle in 120 s; seen {seen:?}, history {history:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ended = started.elapsed();
    stop.cancel();
    running.wait().await.unwrap();
    println!(
        "instances seen (s since start, item, status): {seen:?}; resolved at {:.1} s",
        ended.as_secs_f64()
    );

    let first = seen.first().expect("an instance was seen");
    assert!(
        first.0 >= viral_from.as_secs_f64(),
        "quiet on normal traffic: {seen:?}"
    );
    assert!(
        seen.iter().all(|s| s.1 == "item_42"),
        "only the viral item: {seen:?}"
    );
    let changes: Vec<(String, String)> = history
        .iter()
        .rev()
        .map(|n| (n.labels["item"].clone(), n.status.clone()))
        .collect();
    assert_eq!(
        changes,
        [
            ("item_42".to_string(), "firing".to_string()),
            ("item_42".to_string(), "resolved".to_string())
        ]
    );
    assert!(
        seen.iter().any(|s| s.2 == alert::state::Status::Pending),
        "pending before firing: {seen:?}"
    );
    assert!(
        ended >= viral_from + viral_for,
        "resolved after the scenario ended, at {ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_does_not_resend() {
    let (receiver, url) = Receiver::start(0).await;
    let mut sp = common::service_pipeline("alerts_restart");
    traffic_to_webhook(
        &mut sp.pipeline,
        &url,
        "200ms",
        "",
        "repeat_interval = \"1h\"",
    );
    run_briefly(&sp.pipeline, 500).await;
    assert_eq!(receiver.delivered().len(), 1, "the first run fires once");
    let store = runner::store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &sp.pipeline.config.retention,
        &sp.pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    let before = alert::active_alerts(&*store).await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].status, alert::state::Status::Firing);

    // A second process on the same store, while the alert still holds: it keeps firing quietly.
    let summary = run_briefly(&sp.pipeline, 500).await;
    assert!(
        summary.elapsed > Duration::from_secs(2),
        "evaluated for a while: {:?}",
        summary.elapsed
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.delivered().len(),
        1,
        "no duplicate notification after the restart"
    );
    let after = alert::active_alerts(&*store).await.unwrap();
    let identity = |a: &[alert::ActiveAlert]| {
        a.iter()
            .map(|a| (a.alert.clone(), a.status, a.fired_at))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        identity(&after),
        identity(&before),
        "the same instance, firing since the first run"
    );
}

/// A firing alert is sent again every `repeat_interval`, and not in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_alert_repeats_every_repeat_interval() {
    let (receiver, url) = Receiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    traffic_to_webhook(&mut p, &url, "100ms", "", "repeat_interval = \"1s\"");
    let changes = || {
        receiver
            .delivered()
            .iter()
            .map(|n| n["change"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    run_until(&p, || changes().len() >= 4).await;
    let delivered = receiver.delivered();
    let changes = changes();
    assert_eq!(changes[0], "firing");
    assert!(changes[1..4].iter().all(|c| c == "repeat"), "{changes:?}");
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(delivered[i]["at"].as_str().unwrap()).unwrap()
    };
    for i in 1..4 {
        let gap = (at(i) - at(i - 1)).num_milliseconds();
        assert!(
            (1_000..1_600).contains(&gap),
            "repeat {i} came {gap} ms after the one before"
        );
    }
}

/// Debian's prometheus-alertmanager on a free port with a route to a receiver that sends nothing;
/// stopped on drop.
struct Alertmanager {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    url: String,
    client: reqwest::Client,
}

impl Alertmanager {
    async fn start() -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: quiet\n  group_wait: 1s\nreceivers:\n  - name: quiet\n",
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // One instance: no gossip port to collide with another test's.
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "prometheus-alertmanager (Debian's) is installed by scripts/services.sh install",
            );
        wait_for_port(port).await;
        Alertmanager {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    /// The alerts Alertmanager holds that are not resolved, from its own API.
    async fn alerts(&self) -> Vec<serde_json::Value> {
        self.client
            .get(format!("{}/api/v2/alerts", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The alert named `name`, once Alertmanager holds it (at most 30 s).
    async fn wait_for(&self, name: &str, state: &str) -> serde_json::Value {
        self.wait_for_within(name, state, 30).await
    }

    /// [`Self::wait_for`], for at most `secs`.
    async fn wait_for_within(&self, name: &str, state: &str, secs: u64) -> serde_json::Value {
        self.held_within(name, state, secs)
            .await
            .unwrap_or_else(|alerts| {
                panic!("Alertmanager never held {name} as {state}: {alerts:?}")
            })
    }

    /// The alert named `name` once Alertmanager holds it in `state`, or what it held at the end
    /// of `secs`.
    async fn held_within(
        &self,
        name: &str,
        state: &str,
        secs: u64,
    ) -> Result<serde_json::Value, Vec<serde_json::Value>> {
        let t = Instant::now();
        loop {
            let alerts = self.alerts().await;
            if let Some(a) = alerts
                .iter()
                .find(|a| a["labels"]["alertname"] == name && a["status"]["state"] == state)
            {
                return Ok(a.clone());
            }
            if t.elapsed() >= Duration::from_secs(secs) {
                return Err(alerts);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Alertmanager channel against the real Alertmanager: a rule that holds while events flow is
/// posted with its labels, annotations and the dashboard as its source; a silence made in
/// Alertmanager suppresses it there while the runner keeps it alive (posted again every
/// `resend`, its end moving on); when the traffic stops the rule resolves and the alert ends in
/// Alertmanager at once, long before the end its last post announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_holds_silences_and_ends_a_runner_alert() {
    let am = Alertmanager::start().await;
    let mut sp = common::service_pipeline("alertmanager");
    let p = &mut sp.pipeline;
    p.config.generator.rate = 500.0;
    set_alerts(
        p,
        &format!(
            "[alerting]\ninterval = \"300ms\"\n[alerting.channels.am]\ntype = \"alertmanager\"\nurl = \"{}\"\nresend = \"2s\"\n\
             [[alert]]\nname = \"traffic_flows\"\ncondition = \"health.events_in_per_s > 0\"\nchannels = [\"am\"]\n\
             severity = \"page\"\nkeep_firing_for = \"1s\"\nlabels = {{ team = \"data\" }}\nmessage = \"{{{{ alert }}}} while events flow\"\n",
            am.url
        ),
    );
    common::create_topic(&p.config.kafka).await;
    // The consumer (and evaluator) runs until the end of the test; the generator writes 5,000
    // events at 500/s: ten seconds of traffic, then the rule stops holding.
    let stop = CancellationToken::new();
    let consumer = RunOptions {
        components: Components::CONSUMER,
        ..Default::default()
    };
    let running = pipeline::start(p.clone(), consumer, stop.clone())
        .await
        .expect("consumer starts");
    let generator = {
        let p = p.clone();
        tokio::spawn(async move { common::generate(&p, 5_000).await })
    };
    let p = &sp.pipeline;

    let first = am.wait_for("traffic_flows", "active").await;
    assert_eq!(first["labels"]["severity"], "page");
    assert_eq!(first["labels"]["team"], "data");
    assert_eq!(first["labels"]["pipeline"], p.config.name.as_str());
    assert_eq!(
        first["annotations"]["summary"],
        "traffic_flows while events flow"
    );
    assert_eq!(
        first["generatorURL"],
        format!("http://{}/", p.config.dashboard.listen)
    );

    let now = chrono::Utc::now();
    let silence: serde_json::Value = am
        .client
        .post(format!("{}/api/v2/silences", am.url))
        .json(&serde_json::json!({
            "matchers": [{"name": "alertname", "value": "traffic_flows", "isRegex": false, "isEqual": true}],
            "startsAt": now.to_rfc3339(),
            "endsAt": (now + chrono::Duration::hours(1)).to_rfc3339(),
            "createdBy": "on-call",
            "comment": "planned load test",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let suppressed = am.wait_for("traffic_flows", "suppressed").await;
    assert_eq!(
        suppressed["status"]["silencedBy"][0], silence["silenceID"],
        "Alertmanager's own silence mutes it there"
    );

    // Re-posted while it fires: its end moves on.
    let ends = |a: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(a["endsAt"].as_str().unwrap()).unwrap()
    };
    let t = Instant::now();
    let renewed = loop {
        let a = am.wait_for("traffic_flows", "suppressed").await;
        if ends(&a) > ends(&suppressed) {
            break a;
        }
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "the runner posts a firing alert again every resend (2 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The traffic ends; the rule resolves and the runner ends the alert.
    let t = Instant::now();
    let mut announced = ends(&renewed);
    loop {
        let alerts = am.alerts().await;
        match alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == "traffic_flows")
        {
            Some(a) => announced = announced.max(ends(a)),
            None => break,
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the alert ends when the rule resolves: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_at = chrono::Utc::now();
    assert!(
        gone_at + chrono::Duration::seconds(2) < announced,
        "ended by the runner's resolve ({gone_at}), not by running out the end its firing posts announced ({announced})"
    );
    generator.await.unwrap();
    stop.cancel();
    let summary = running.wait().await.expect("pipeline run");
    assert_eq!(summary.stats.notifications_failed, 0);
    assert_eq!(
        summary.stats.notifications_sent, 2,
        "one firing and one resolved notification; refreshes are not notifications"
    );
}

/// The README's chat webhook examples load: each body renders JSON for a sample notification.
#[test]
fn the_readme_chat_webhook_bodies_render_json() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let start = readme
        .find("[alerting.channels.slack]")
        .expect("the Slack example");
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let text = ["SLACK", "MATTERMOST", "TEAMS"]
        .iter()
        .fold(block.to_string(), |t, v| {
            t.replace(
                &format!("${{{v}_WEBHOOK_URL}}"),
                "https://hooks.example.com/x",
            )
        });
    #[derive(serde::Deserialize)]
    struct Sections {
        alerting: Channels,
    }
    #[derive(serde::Deserialize)]
    struct Channels {
        channels: std::collections::BTreeMap<String, alert::ChannelConfig>,
    }
    let s: Sections = toml::from_str(&text).expect("the examples parse");
    assert_eq!(s.alerting.channels.len(), 3);
    for (name, channel) in s.alerting.channels {
        let one = std::collections::BTreeMap::from([(name.clone(), channel)]);
        alert::Dispatcher::check(&one).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

/// Waits until `done` holds (at most 40 s).
async fn wait(what: &str, done: impl Fn() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(40), "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `runner silence` (the binary) against a running runner, answering `args` with `token`.
fn silence_cli(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    common::runner()
        .arg("silence")
        .args(args)
        .args(["--url", url, "--token", token])
        .output()
        .expect("runner silence runs")
}

/// Starts `p` on its own new topic with every component, the dashboard included; cancel the
/// token to stop it.
/// What a running pipeline did each second (counters, a metric's value as the rules read it,
/// the alert history), for a failing end-to-end run to say where it went wrong.
struct Timeline {
    lines: Arc<Mutex<Vec<String>>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Timeline {
    fn sample(running: &pipeline::Running, metric: &str, started: Instant) -> Timeline {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (stats, store, metrics) = (
            running.stats.clone(),
            running.store.clone().expect("a consumer"),
            running.metrics.clone(),
        );
        let (into, metric) = (lines.clone(), metric.to_string());
        let sampler = tokio::spawn(async move {
            loop {
                let s = stats.snapshot();
                let set = metrics.borrow().clone();
                let now = chrono::Utc::now().timestamp_millis();
                let value = match set.metrics().iter().find(|m| m.name() == metric) {
                    Some(m) => match runner::aggregate::read(m, &*store, now).await {
                        Ok(v) => format!(
                            "{} filled={} backfilling={:?}",
                            v.value, v.filled, v.backfilling
                        ),
                        Err(e) => format!("unreadable: {e:#}"),
                    },
                    None => "no such metric".into(),
                };
                let alerts: Vec<String> = match store.recent_alerts(5).await {
                    Ok(h) => h
                        .iter()
                        .map(|n| format!("{}:{}", n.alert, n.status))
                        .collect(),
                    Err(e) => vec![format!("unreadable: {e:#}")],
                };
                into.lock().unwrap().push(format!(
                    "{:>5.1}s generated {} consumed {} stored {} alert_errors {} sent {} failed {} | {metric} {value} | history {alerts:?}",
                    started.elapsed().as_secs_f64(),
                    s.generated,
                    s.consumed,
                    s.stored,
                    s.alert_errors,
                    s.notifications_sent,
                    s.notifications_failed,
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Timeline { lines, sampler }
    }

    fn report(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

async fn start_with_dashboard(p: &Pipeline) -> (pipeline::Running, CancellationToken) {
    common::create_topic(&p.config.kafka).await;
    let stop = CancellationToken::new();
    let options = RunOptions {
        components: Components {
            dashboard: true,
            ..Components::ALL
        },
        ..Default::default()
    };
    let running = pipeline::start(p.clone(), options, stop.clone())
        .await
        .expect("pipeline starts");
    (running, stop)
}

/// `runner silence add <args>` that succeeds; the silence's id it prints.
fn silence_added(url: &str, token: &str, args: &[&str]) -> String {
    let added = silence_cli(url, token, &[&["add"], args].concat());
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    String::from_utf8_lossy(&added.stdout).trim().to_string()
}

/// Silences end to end on Kafka and MongoDB: a rule repeating every second to a webhook is
/// silenced with `runner silence add` (a viewer's token is refused; an operator's is recorded as
/// who made it); the dashboard's API shows the instance silenced, its repeats are kept as
/// history but nothing reaches the webhook; the silence is in the MongoDB store (so every
/// replica and a restart see it); `runner silence expire` ends it and the still-firing alert is
/// sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_from_runner_silence_mutes_a_firing_alert_until_it_is_expired() {
    let (receiver, hook_url) = Receiver::start(0).await;
    let mut sp = common::service_pipeline("silences");
    let p = &mut sp.pipeline;
    p.config.generator.rate = 500.0;
    let port = free_port();
    p.config.dashboard.listen = format!("127.0.0.1:{port}");
    p.config.dashboard.tokens = toml::from_str(
        "wall = { secret = \"viewer-secret\" }\nops = { secret = \"operator-secret\", role = \"operator\" }",
    )
    .unwrap();
    traffic_to_webhook(
        p,
        &hook_url,
        "200ms",
        "",
        "repeat_interval = \"1s\"\nseverity = \"page\"",
    );
    let (running, stop) = start_with_dashboard(p).await;
    let url = format!("http://127.0.0.1:{port}");
    wait("the alert fires", || !receiver.delivered().is_empty()).await;

    let refused = silence_cli(
        &url,
        "viewer-secret",
        &["add", "alertname=traffic", "-c", "load test"],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("operator"),
        "{stderr}"
    );
    let id = silence_added(
        &url,
        "operator-secret",
        &[
            "alertname=traffic",
            "severity=~page|critical",
            "--duration",
            "1h",
            "--comment",
            "load test",
        ],
    );

    // The evaluator sees it at its next evaluation; the dashboard's API shows it.
    let client = reqwest::Client::new();
    let alerts = || async {
        client
            .get(format!("{url}/api/alerts"))
            .bearer_auth("viewer-secret")
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let t = Instant::now();
    while alerts().await["active"][0]["silenced_by"] != id.as_str() {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", alerts().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was queued before may still arrive; then nothing for three repeat intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = receiver.delivered().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.delivered().len(),
        sent,
        "nothing is sent while silenced"
    );
    let recent = alerts().await["recent"].clone();
    assert!(
        recent
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["change"] == "repeat" && n["silenced_by"] == id.as_str()),
        "the silenced repeats are kept as history: {recent}"
    );

    let listed = silence_cli(&url, "viewer-secret", &["list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.lines().any(|l| l.starts_with(&id)
            && l.contains("active")
            && l.contains("ops")
            && l.contains("alertname=\"traffic\"")),
        "{listed}"
    );
    let stored = runner::pipeline::open_store(&p.config)
        .await
        .unwrap()
        .store
        .silences(0)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .any(|s| s.id == id && s.created_by == "ops" && s.comment == "load test"),
        "kept in MongoDB: {stored:?}"
    );

    let expired = silence_cli(&url, "operator-secret", &["expire", &id]);
    assert!(
        expired.status.success(),
        "{}",
        String::from_utf8_lossy(&expired.stderr)
    );
    wait(
        "the still-firing alert is sent when its silence ends",
        || receiver.delivered().len() > sent,
    )
    .await;
    assert_eq!(receiver.delivered()[sent]["change"], "firing");
    stop.cancel();
    running.wait().await.expect("pipeline run");
}

/// The issue's outage run on the real services, compressed into a minute: the shipped `outage`
/// scenario (traffic to a tenth) through Kafka into MongoDB fires the shipped `traffic_drop`
/// rule; `[alerting.route]` sends critical alerts, grouped by rule, to Debian's Alertmanager and
/// a webhook; a silence made with `runner silence add` while it fires mutes its next
/// notification (the resolution), which is kept as history but reaches neither channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_routed_to_alertmanager_is_grouped_and_a_silence_mutes_its_resolution() {
    let am = Alertmanager::start().await;
    let (receiver, hook_url) = Receiver::start(0).await;
    let mut sp = common::service_pipeline("outage_routed");
    let p = &mut sp.pipeline;
    let rule = compressed(
        p,
        "interaction_types",
        "outage",
        (Duration::from_secs(20), Duration::from_secs(20)),
        "traffic_drop",
        Duration::from_secs(2),
    );
    let thresholds = p.config.alerting.thresholds.clone();
    let port = free_port();
    p.config.dashboard.listen = format!("127.0.0.1:{port}");
    p.config.dashboard.token = runner::base::Secret::new("ops-secret");
    set_alerts(
        p,
        &format!(
            "[alerting]\ninterval = \"300ms\"\n\
             [alerting.channels.am]\ntype = \"alertmanager\"\nurl = \"{}\"\nresend = \"2s\"\n\
             [alerting.channels.hook]\ntype = \"webhook\"\nurl = \"{hook_url}\"\n\
             [alerting.route]\ngroup_by = [\"alertname\"]\ngroup_wait = \"1s\"\ngroup_interval = \"2s\"\nchannels = [\"log\"]\n\
             [[alerting.route.routes]]\nmatchers = ['severity = \"critical\"']\nchannels = [\"am\", \"hook\"]\n",
            am.url
        ),
    );
    p.config.alerting.thresholds = thresholds;
    p.config.alerts = vec![rule];
    let started = Instant::now();
    let (running, stop) = start_with_dashboard(p).await;
    let store = running.store.clone().unwrap();
    let timeline = Timeline::sample(&running, "interaction_types", started);

    let fired = match am.held_within("traffic_drop", "active", 90).await {
        Ok(a) => a,
        Err(alerts) => panic!(
            "Alertmanager never held traffic_drop as active: {alerts:?}\n{}",
            timeline.report()
        ),
    };
    let fired_after = started.elapsed();
    assert_eq!(fired["labels"]["severity"], "critical");
    assert!(
        fired_after >= Duration::from_secs(20),
        "quiet before the outage: fired {fired_after:?} after start"
    );
    wait("the webhook has the group's notification", || {
        !receiver.delivered().is_empty()
    })
    .await;
    let group = receiver.delivered()[0].clone();
    assert_eq!(group["alerts"].as_array().map(Vec::len), Some(1), "{group}");
    assert_eq!(group["alerts"][0]["alert"], "traffic_drop");
    assert_eq!(group["labels"]["alertname"], "traffic_drop");

    let id = silence_added(
        &format!("http://127.0.0.1:{port}"),
        "ops-secret",
        &["alertname=traffic_drop", "--comment", "planned outage"],
    );

    // The traffic comes back at 40 s; the rule resolves a few seconds later, silenced.
    let t = Instant::now();
    let resolved = loop {
        let history = store.recent_alerts(50).await.unwrap();
        if let Some(n) = history.iter().find(|n| n.status == "resolved") {
            break n.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "traffic_drop never resolved: {history:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(resolved.silenced_by.as_deref(), Some(id.as_str()));
    // Longer than group_interval: a resolution that were sent would have gone by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hook: Vec<String> = receiver
        .delivered()
        .iter()
        .map(|n| {
            format!(
                "{}:{}",
                n["change"],
                n["alerts"].as_array().map_or(0, Vec::len)
            )
        })
        .collect();
    stop.cancel();
    let summary = running.wait().await.expect("pipeline run");
    println!(
        "fired {:.1} s after start; webhook got {hook:?}; notifications sent (all channels) {}, failed {}",
        fired_after.as_secs_f64(),
        summary.stats.notifications_sent,
        summary.stats.notifications_failed
    );
    assert_eq!(
        hook,
        ["\"firing\":1"],
        "one group notification; the silenced resolution is not sent"
    );
    assert_eq!(
        summary.stats.notifications_sent, 2,
        "the group's firing notification to Alertmanager and to the webhook, nothing more"
    );
    assert_eq!(summary.stats.notifications_failed, 0);
}
