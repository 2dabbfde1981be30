//! The dashboard over real stores: every route, escaping, auth, Prometheus format, and a real
//! headless Chromium watching the page update live.

mod common;

use common::{free_port, get, get_raw, wait_for_port};
use runner::config::Pipeline;
use runner::pipeline::{self, Components, RunOptions, Running};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn start(mut p: Pipeline, port: u16, token: &str) -> (Running, CancellationToken) {
    p.config.dashboard.listen = format!("127.0.0.1:{port}");
    p.config.dashboard.refresh = Duration::from_millis(500);
    p.config.dashboard.token = runner::base::Secret::new(token);
    p.config.generator.rate = 2000.0;
    // One rule that fires as soon as there is traffic, so the alert views have something to show.
    common::set_alerts(
        &mut p,
        r#"
        [alerting]
        interval = "300ms"
        [[alert]]
        name = "traffic"
        condition = "if metrics.active_users > 0 { #{ value: metrics.active_users } } else { false }"
        severity = "info"
        "#,
    );
    let stop = CancellationToken::new();
    let components = Components {
        dashboard: true,
        ..Components::ALL
    };
    let running = pipeline::start(
        p,
        RunOptions {
            components,
            ..Default::default()
        },
        stop.clone(),
    )
    .await
    .unwrap();
    wait_for_port(port).await;
    (running, stop)
}

/// Checks every route; `token` is sent when set.
/// Waits until the dashboard's metrics count users: events went all the way through (joining a
/// consumer group on a busy broker can take longer than a fixed pause).
fn wait_for_traffic(port: u16, auth: &[(&str, &str)]) {
    let started = std::time::Instant::now();
    loop {
        let (code, body) = get(port, "/api/metrics", auth);
        let counted = serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .ok()
            .and_then(|m| {
                let users = m.iter().find(|m| m["name"] == "active_users")?;
                users["value"].as_u64()
            })
            .is_some_and(|n| n > 0);
        if code == 200 && counted {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no events reached the metrics within 60 s: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check_routes(port: u16, auth: &[(&str, &str)]) {
    wait_for_traffic(port, auth);
    let (code, html) = get(port, "/", auth);
    assert_eq!(code, 200);
    assert!(
        html.contains("data-panel=\"headline\"") && html.contains("data-panel=\"health\""),
        "{html}"
    );
    // The headline tiles are the ones the pipeline file names, in its order.
    let tiles: Vec<&str> = html
        .split("data-tile=\"")
        .skip(1)
        .map(|t| t.split('"').next().unwrap())
        .collect();
    assert_eq!(
        tiles,
        ["active_users", "active_items", "avg_interactions_per_user"],
        "{html}"
    );
    // Session metrics have tiles of their own, and their panels say how a session ends.
    let session_tiles: Vec<&str> = html
        .split("data-session-tile=\"")
        .skip(1)
        .map(|t| t.split('"').next().unwrap())
        .collect();
    assert_eq!(
        session_tiles,
        ["sessions_per_minute", "mean_session_length"],
        "{html}"
    );
    assert!(
        html.contains("a session ends 30s after its last record"),
        "{html}"
    );
    let (code, panels) = get(port, "/panels?range=1h", auth);
    assert_eq!(code, 200);
    assert!(panels.contains("data-metric=\"active_users\""));
    let (code, body) = get(port, "/api/metrics", auth);
    assert_eq!(code, 200);
    let metrics: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(metrics.len(), 16);
    assert!(
        metrics
            .iter()
            .find(|m| m["name"] == "active_users")
            .unwrap()["value"]
            .as_u64()
            .unwrap()
            > 0,
        "{body}"
    );
    let (code, body) = get(port, "/api/metrics/active_users/history?range=5m", auth);
    assert_eq!(code, 200);
    let points: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(
        points.len() > 10 && points.iter().any(|p| p["value"].as_u64().unwrap_or(0) > 0),
        "{body}"
    );
    // Five minutes ago this store was empty: those windows are no data, not zero users.
    assert!(points[0]["value"].is_null(), "{body}");
    let (code, body) = get(port, "/api/topology", auth);
    assert_eq!(code, 200);
    let topology: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nodes: Vec<&str> = topology["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        [
            "generator",
            "transport",
            "consumer",
            "store",
            "metrics",
            "alerts"
        ],
        "{body}"
    );
    assert_eq!(topology["edges"].as_array().unwrap().len(), 5, "{body}");
    assert_eq!(get(port, "/api/metrics/nope/history", auth).0, 404);
    let (code, body) = get(port, "/api/health", auth);
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(health["stored"].as_u64().unwrap() > 0);
    let (code, body) = get(port, "/metrics", auth);
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    // Classic text format unless OpenMetrics is asked for (as Prometheus does), where a counter
    // family `runner_events_stored` has the sample `..._total`.
    assert!(
        body.contains("# TYPE runner_events_stored_total counter\n"),
        "{body}"
    );
    let accept = [
        auth,
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
    ]
    .concat();
    let (code, open) = get(port, "/metrics", &accept);
    assert_eq!(code, 200);
    assert!(
        open.contains("# TYPE runner_events_stored counter\n") && open.ends_with("# EOF\n"),
        "{open}"
    );
    let stored = scrape
        .samples
        .iter()
        .find(|s| s.metric == "runner_events_stored_total")
        .expect("stored counter");
    assert!(
        matches!(stored.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v > 0.0),
        "{body}"
    );
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "runner_metric" && s.labels.get("name") == Some("active_users")));
    // The item catalogue's 500 rows.
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "runner_lookup_rows"
                && s.labels.get("lookup") == Some("items")
                && matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 500.0)),
        "{body}"
    );
    let (code, body) = get(port, "/api/alerts", auth);
    assert_eq!(code, 200);
    let alerts: serde_json::Value = serde_json::from_str(&body).unwrap();
    let active = alerts["active"].as_array().unwrap();
    assert!(
        active.iter().any(|a| a["alert"] == "traffic"
            && a["status"] == "firing"
            && a["value"].as_f64() > Some(0.0)),
        "{body}"
    );
    assert!(
        alerts["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["alert"] == "traffic" && n["change"] == "firing"),
        "{body}"
    );
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "runner_alerts" && s.labels.get("alertname") == Some("traffic")));
    assert_eq!(get(port, "/assets/dashboard.js", auth).0, 200);
    assert_eq!(get(port, "/assets/missing.js", auth).0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (running, stop) = start(common::embedded_pipeline(dir.path()), port, "").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(move || check_routes(port, &[]))
        .await
        .unwrap();
    stop.cancel();
    running.wait().await.unwrap();
}

/// Opens a live stream and returns it with the response head (status line and headers).
fn open_stream(port: u16) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /events?range=5m HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).to_string())
}

/// Viewers beyond `max_clients` get 503 with Retry-After; a seat given back is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_beyond_the_limit_get_503_until_a_seat_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut p = common::embedded_pipeline(dir.path());
    p.config.dashboard.max_clients = 2;
    let (running, stop) = start(p, port, "").await;
    tokio::task::spawn_blocking(move || {
        let (first, head) = open_stream(port);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (_second, head) = open_stream(port);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (_, head) = open_stream(port);
        assert!(
            head.starts_with("HTTP/1.1 503") && head.to_lowercase().contains("retry-after: 5"),
            "{head}"
        );
        drop(first);
        let t = Instant::now();
        loop {
            let (_s, head) = open_stream(port);
            if head.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the seat was not given back: {head}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    stop.cancel();
    running.wait().await.unwrap();
}

/// A token given once in the address becomes an HttpOnly cookie, the page is served from an
/// address without it, and it appears nowhere in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_the_address_becomes_a_cookie_and_stays_out_of_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let token = "t0k&n with space";
    let (running, stop) = start(common::embedded_pipeline(dir.path()), port, token).await;
    tokio::task::spawn_blocking(move || {
        let first = get_raw(port, "/?range=1h&token=t0k%26n%20with%20space", &[]);
        assert_eq!(first.split_whitespace().nth(1), Some("303"), "{first}");
        assert!(first.contains("\r\nlocation: /?range=1h\r\n"), "{first}");
        let cookie = first
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .expect("a cookie is set")
            .to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_string();
        let (code, html) = get(port, "/?range=1h", &[("Cookie", &pair)]);
        assert_eq!(code, 200, "the cookie alone opens the page");
        assert!(
            !html.contains("t0k") && !html.contains("token="),
            "the token is not written into the page"
        );
        assert_eq!(get(port, "/api/health", &[("Cookie", &pair)]).0, 200);
        assert_eq!(
            get(port, "/api/health", &[("Cookie", "runner_token=t0k")]).0,
            401
        );
        // Probes need no token.
        assert_eq!(get(port, "/healthz", &[]), (200, "ok\n".to_string()));
        assert_eq!(get(port, "/readyz", &[]), (200, "ready\n".to_string()));
    })
    .await
    .unwrap();
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_mongodb_with_a_token() {
    let sp = common::service_pipeline("dashboard");
    let port = free_port();
    let (running, stop) = start(sp.pipeline.clone(), port, "s3cret").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(move || {
        for path in [
            "/",
            "/api/metrics",
            "/api/health",
            "/api/alerts",
            "/metrics",
            "/events",
            "/panels",
        ] {
            assert_eq!(get(port, path, &[]).0, 401, "{path} needs the token");
            assert_eq!(
                get(port, path, &[("Authorization", "Bearer wrong")]).0,
                401,
                "{path}"
            );
        }
        assert_eq!(
            get(port, "/api/health?token=s3cret", &[]).0,
            401,
            "a token in the URL opens only the page"
        );
        assert_eq!(
            get(port, "/?token=s3cret", &[]).0,
            303,
            "the page takes it once and redirects it away"
        );
        // DNS rebinding: a request for another host name is refused, token or not.
        let rebound = get_raw(
            port,
            "/api/health",
            &[
                ("Host", "evil.example:8050"),
                ("Authorization", "Bearer s3cret"),
            ],
        );
        assert_eq!(rebound.split_whitespace().nth(1), Some("421"), "{rebound}");
        check_routes(port, &[("Authorization", "Bearer s3cret")]);
        let (_, body) = get(port, "/api/health", &[("Authorization", "Bearer s3cret")]);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            health["consumer_lag"].as_array().map(|a| a.len()),
            Some(3),
            "lag of every partition: {body}"
        );
        let (_, body) = get(port, "/metrics", &[("Authorization", "Bearer s3cret")]);
        assert!(
            body.contains("runner_consumer_lag{partition=\"0\"}"),
            "{body}"
        );
        // The flow names the topic, each partition with its end offset, and the group's members
        // with every partition among them.
        let (_, body) = get(port, "/api/topology", &[("Authorization", "Bearer s3cret")]);
        let topology: serde_json::Value = serde_json::from_str(&body).unwrap();
        let transport = &topology["nodes"][1];
        assert!(
            transport["label"].as_str().unwrap().contains(&sp.topic),
            "{body}"
        );
        let partitions = transport["partitions"].as_array().unwrap();
        assert_eq!(partitions.len(), 3, "{body}");
        assert!(
            partitions
                .iter()
                .map(|p| p["end_offset"].as_i64().unwrap())
                .sum::<i64>()
                > 0,
            "{body}"
        );
        let mut assigned: Vec<i64> = topology["nodes"][2]["members"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| {
                m["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap())
            })
            .collect();
        assigned.sort();
        assert_eq!(assigned, [0, 1, 2], "{body}");
    })
    .await
    .unwrap();
    stop.cancel();
    running.wait().await.unwrap();
}

/// A grouped metric whose panes reach max_groups says so on its panel and in the API: how many
/// records of the window were counted under `__other__`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_past_max_groups_says_so_on_its_panel() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut p = common::embedded_pipeline(dir.path());
    let top = p
        .config
        .metrics
        .iter_mut()
        .find(|m| m.name == "top_items")
        .expect("shipped top_items");
    top.max_groups = 3;
    let (running, stop) = start(p, port, "").await;
    let started = Instant::now();
    let (panels, api) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (panels, api) = tokio::task::spawn_blocking(move || {
            (
                get(port, "/panels", &[]).1,
                get(port, "/api/metrics", &[]).1,
            )
        })
        .await
        .unwrap();
        if panels.contains("past max_groups") || started.elapsed() > Duration::from_secs(15) {
            break (panels, api);
        }
    };
    assert!(panels.contains("past max_groups (3 per pane)"), "{panels}");
    let values: Vec<serde_json::Value> = serde_json::from_str(&api).unwrap();
    let top = values.iter().find(|v| v["name"] == "top_items").unwrap();
    assert!(top["other"].as_u64().unwrap_or(0) > 0, "{top}");
    assert!(
        !top["value"].to_string().contains("__other__"),
        "the ranking leaves the overflow out: {top}"
    );
    assert!(values
        .iter()
        .find(|v| v["name"] == "active_users")
        .unwrap()
        .get("other")
        .is_none());
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_fields_render_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("gen.rhai");
    std::fs::write(
        &script,
        r#"#{ user_id: zipf("u", 10, 1.0), item_id: weighted(#{ "<script>alert('x')</script>": 1.0 }), interaction_type: weighted(#{ view: 1.0 }) }"#,
    )
    .unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    p.config.generator.script = Some(script);
    let port = free_port();
    let (running, stop) = start(p, port, "").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, html) = tokio::task::spawn_blocking(move || get(port, "/", &[]))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        html.contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt;"),
        "escaped as text"
    );
    assert!(!html.contains("<script>alert"), "never as markup");
    stop.cancel();
    running.wait().await.unwrap();
}

/// An override folder holding one template changes that one (the rest stays built in); a
/// broken edit keeps the previous version rendering with the error shown; a file added to the
/// folder later applies too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_template_keeps_the_previous_page() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let panel = templates.join("_metrics.html");
    let good = std::fs::read_to_string(common::repo_root().join("templates/_metrics.html"))
        .unwrap()
        .replace(
            "<section class=\"metrics\">",
            "<section class=\"metrics\" data-ours=\"1\">",
        );
    std::fs::write(&panel, &good).unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    p.config.dashboard.templates = Some(templates.clone());
    let port = free_port();
    let (running, stop) = start(p, port, "").await;
    let (code, html) = tokio::task::spawn_blocking(move || get(port, "/", &[]))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        html.contains("data-ours=\"1\"") && html.contains("data-panel=\"headline\""),
        "the override and the built-in rest: {html}"
    );
    let broken = good.replacen("{% endfor %}", "{% endfor", 1);
    assert_ne!(broken, good);
    std::fs::write(&panel, broken).unwrap();
    let (code, html) = tokio::task::spawn_blocking(move || get(port, "/", &[]))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        html.contains("data-panel=\"headline\"") && html.contains("data-ours=\"1\""),
        "the previous version still renders"
    );
    assert!(
        html.contains("Template error") && html.contains("_metrics.html:"),
        "the error is visible: {html}"
    );
    std::fs::write(&panel, &good).unwrap();
    let text =
        std::fs::read_to_string(common::repo_root().join("templates/_headline.html")).unwrap();
    assert!(text.contains("events/s in"));
    std::fs::write(
        templates.join("_headline.html"),
        text.replace("events/s in", "events per second in"),
    )
    .unwrap();
    let (_, html) = tokio::task::spawn_blocking(move || get(port, "/", &[]))
        .await
        .unwrap();
    assert!(
        html.contains("events per second in") && !html.contains("Template error"),
        "a fixed template applies, and a file added later"
    );
    stop.cancel();
    running.wait().await.unwrap();
}

/// A port another process holds is an error at start, naming the key to change, before any
/// event moves: not a pipeline that runs on without its page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_port_in_use_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    p.config.dashboard.listen = holder.local_addr().unwrap().to_string();
    let components = Components {
        dashboard: true,
        ..Components::ALL
    };
    let err = pipeline::start(
        p,
        RunOptions {
            components,
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("the start fails");
    let text = format!("{err:#}");
    assert!(
        text.contains("dashboard.listen")
            && text.contains(&holder.local_addr().unwrap().to_string()),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sees_live_updates() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The single token is an operator's: the page's silence button may make a silence.
    let (running, stop) = start(common::embedded_pipeline(dir.path()), port, "br0wser").await;

    let (mut driver, driver_port) = common::chromedriver().await;
    let client = common::browser(driver_port, &dir.path().join("chrome"), &[]).await;
    let result = async {
        // Opened once with the token, as a link handed out would; the cookie carries it after.
        client.goto(&format!("http://127.0.0.1:{port}/?token=br0wser")).await?;
        client.execute("window.__sameDocument = 'yes'; return null;", vec![]).await?;
        let t = Instant::now();
        let values = loop {
            let updates: i64 = client
                .execute("return Number(document.getElementById('live').dataset.updates);", vec![])
                .await?
                .as_i64()
                .unwrap_or(0);
            if updates >= 3 {
                break updates;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "the page did not update live ({updates} updates)");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (pushed, polled): (i64, i64) = {
            let v = client.execute("const d = document.getElementById('live').dataset; return [Number(d.pushed || 0), Number(d.polled || 0)];", vec![]).await?;
            (v[0].as_i64().unwrap_or(0), v[1].as_i64().unwrap_or(0))
        };
        assert!(pushed >= 3, "the updates arrived as server-sent events ({pushed} pushed, {polled} polled)");
        let same: serde_json::Value = client.execute("return window.__sameDocument;", vec![]).await?;
        assert_eq!(same, "yes", "updated without reloading the page");
        let empty: serde_json::Value = client
            .execute(
                // A grouped metric whose window has no records yet (revenue by category before the
                // first purchase, seconds after the start) says so.
                "return [...document.querySelectorAll('[data-panel=metric]')].filter(a => !a.querySelector('.value, .bars tr, circle, .none')).map(a => a.dataset.metric)
                  .concat([...document.querySelectorAll('.headline .num span')].filter(s => s.textContent.trim() === '–').map(() => 'headline'));",
                vec![],
            )
            .await?;
        assert_eq!(empty, serde_json::json!([]), "every panel has data");
        let firing: serde_json::Value = client
            .execute("return [...document.querySelectorAll('[data-panel=alerts] tr.alert-firing')].map(r => r.dataset.alert);", vec![])
            .await?;
        assert_eq!(firing, serde_json::json!(["traffic"]), "the alerts panel shows the firing alert");
        // Its "silence 1h" button: a dialog asks why, the page posts the silence with its
        // token's cookie, and at the next refresh the alert shows silenced.
        client
            .execute("document.querySelector('[data-panel=alerts] button.silence').click(); return document.getElementById('silence-dialog').open;", vec![])
            .await?;
        client
            .execute("document.getElementById('silence-comment').value = 'checked in a browser'; document.getElementById('silence-submit').click(); return null;", vec![])
            .await?;
        let t = Instant::now();
        loop {
            let state: serde_json::Value = client
                .execute("return [document.querySelectorAll('[data-panel=alerts] .badge.silenced').length, document.getElementById('silence-error').textContent];", vec![])
                .await?;
            if state[0].as_u64() >= Some(1) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "the alert never showed silenced: {state}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let silences: serde_json::Value = client
            .execute("return fetch('/api/silences').then(r => r.json());", vec![])
            .await?;
        assert_eq!(silences[0]["comment"], "checked in a browser", "{silences}");
        assert_eq!(silences[0]["created_by"], "operator", "{silences}");
        assert_eq!(silences[0]["matchers"][0]["name"], "alertname", "{silences}");
        // Every chart has a time axis with labelled ticks (times of day) and a grid.
        let axes: serde_json::Value = client
            .execute(
                "return [...document.querySelectorAll('[data-panel=metric]')].map(a => [a.dataset.metric,
                   [...a.querySelectorAll('svg.chart text.tick.x')].filter(t => /^\\d\\d:\\d\\d(:\\d\\d)?$/.test(t.textContent)).length,
                   a.querySelectorAll('svg.chart line.grid').length]);",
                vec![],
            )
            .await?;
        for m in axes.as_array().unwrap() {
            assert!(m[1].as_u64() >= Some(3) && m[2].as_u64() >= Some(3), "a chart without a labelled time axis and grid: {m}");
        }
        // The grouped metric is drawn as one line per key, with a legend naming them. In the
        // first seconds of a run the sessions have only viewed and clicked: wait (the page
        // updates itself) until a third type has happened.
        let t = Instant::now();
        let grouped = loop {
            let grouped: serde_json::Value = client
                .execute(
                    "const a = document.querySelector('[data-metric=interaction_types]');
                     return [a.querySelectorAll('svg.chart path.series').length, [...a.querySelectorAll('.legend li')].map(l => l.textContent)];",
                    vec![],
                )
                .await?;
            if grouped[0].as_u64() >= Some(3) || t.elapsed() > Duration::from_secs(20) {
                break grouped;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(grouped[0].as_u64() >= Some(3) && grouped[1].as_array().unwrap().iter().any(|k| k == "view"), "interaction types over time: {grouped}");
        // The flow panel's rates move: the store edge carries events and its total grows.
        let flow = "const e = document.querySelector('[data-edge=consumer-store]');
                    return [Number(e.dataset.rate), document.querySelector('[data-node=store]').textContent];";
        let before = client.execute(flow, vec![]).await?;
        let t = Instant::now();
        let after = loop {
            let now = client.execute(flow, vec![]).await?;
            if now[1] != before[1] && now[0].as_f64() > Some(0.0) {
                break now;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "the flow panel did not move: {before} then {now}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let desktop = common::repo_root().join("target/dashboard-desktop.png");
        std::fs::write(&desktop, client.screenshot().await?).unwrap();
        // Phone width: one column of panels and nothing wider than the screen.
        client.set_window_size(390, 844).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let phone: serde_json::Value = client
            .execute(
                "return [getComputedStyle(document.querySelector('.metrics')).gridTemplateColumns.split(' ').length,
                         document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await?;
        assert_eq!(phone[0], 1, "one column of panels on a phone: {phone}");
        assert!(phone[1].as_i64() <= phone[2].as_i64(), "the page is wider than a phone's screen: {phone}");
        let phone_png = common::repo_root().join("target/dashboard-phone.png");
        std::fs::write(&phone_png, client.screenshot().await?).unwrap();
        println!(
            "{values} live updates seen ({pushed} pushed over SSE, {polled} polled); store edge {} then {}; screenshots at {} and {}",
            before, after, desktop.display(), phone_png.display()
        );
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    let _ = client.close().await;
    // Dark mode: the page follows the system's colour scheme.
    let dark = common::browser(
        driver_port,
        &dir.path().join("chrome-dark"),
        &[
            "--force-dark-mode",
            "--blink-settings=preferredColorScheme=0",
        ],
    )
    .await;
    let dark_result = async {
        dark.goto(&format!("http://127.0.0.1:{port}/?token=br0wser")).await?;
        let colours = dark
            .execute("return [matchMedia('(prefers-color-scheme: dark)').matches, getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color];", vec![])
            .await?;
        assert_eq!(colours, serde_json::json!([true, "rgb(20, 23, 29)", "rgb(227, 231, 238)"]), "dark colours in dark mode");
        let png = common::repo_root().join("target/dashboard-dark.png");
        std::fs::write(&png, dark.screenshot().await?).unwrap();
        println!("dark mode screenshot at {}", png.display());
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    let _ = dark.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
    result.unwrap();
    dark_result.unwrap();
    stop.cancel();
    running.wait().await.unwrap();
}

/// A reload applies a new dashboard token and refresh at once, and reports a new listen address
/// as needing a restart (it was neither applied nor reported before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_token_applies_on_reload_and_listen_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::repo_root();
    let port = free_port();
    let file = |token: &str, listen: &str| {
        format!(
            "name = \"live-dashboard\"\n{event}[kafka]\nbootstrap_servers = \"embedded\"\ntopic = \"t\"\nconsumer_group = \"g\"\n\
             [mongodb]\nuri = \"embedded\"\ndatabase = \"d\"\n[embedded]\ndata_dir = \"{data}\"\n\
             [generator]\nscript = \"{gen}\"\nrate = 200\nparams = {{ USERS = 100, ITEMS = 50 }}\n\
             [dashboard]\nlisten = \"{listen}\"\nrefresh = \"1s\"\ntemplates = \"{templates}\"\ntoken = \"{token}\"\n",
            event = common::shipped_event_section(),
            data = dir.path().join("data").display(),
            gen = root.join("scripts/generator.rhai").display(),
            templates = root.join("templates").display(),
        )
    };
    let path = dir.path().join("p.toml");
    std::fs::write(&path, file("first", &format!("127.0.0.1:{port}"))).unwrap();
    let p = Pipeline::load_with_env(&path, |_| None).unwrap();
    let stop = CancellationToken::new();
    let components = Components {
        dashboard: true,
        ..Components::ALL
    };
    let running = pipeline::start(
        p,
        RunOptions {
            components,
            ..Default::default()
        },
        stop.clone(),
    )
    .await
    .unwrap();
    wait_for_port(port).await;
    let health = move |token: &'static str| {
        get(
            port,
            "/api/health",
            &[("Authorization", &format!("Bearer {token}"))],
        )
    };
    assert_eq!(
        tokio::task::spawn_blocking(move || health("first").0)
            .await
            .unwrap(),
        200
    );

    std::fs::write(&path, file("second", "127.0.0.1:1")).unwrap();
    let t = std::time::Instant::now();
    while running.reload_status.lock().unwrap().reloads == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the edit was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = running.reload_status.lock().unwrap().clone();
    assert_eq!(status.needs_restart, vec!["dashboard.listen"], "{status:?}");
    assert!(
        status
            .last_changes
            .contains(&"dashboard.token: live".to_string()),
        "{status:?}"
    );
    let (old, new) = tokio::task::spawn_blocking(move || (health("first").0, health("second")))
        .await
        .unwrap();
    assert_eq!(old, 401, "the old token no longer opens the dashboard");
    assert_eq!(
        new.0, 200,
        "the new token does, on the address bound at start"
    );
    assert!(
        new.1.contains("dashboard.listen"),
        "the health API shows what needs a restart: {}",
        new.1
    );
    stop.cancel();
    running.wait().await.unwrap();
}

/// An open `/events` tab must not keep the process alive: `--for` (like Ctrl-C and the idle
/// exit) ends the server-sent-event streams and the process exits 0.
#[test]
fn shutdown_with_an_open_event_stream_exits() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = common::runner()
        .args([
            "run",
            common::shipped_pipeline().to_str().unwrap(),
            "--for",
            "5s",
            "--log",
            "warn",
        ])
        .env("DASHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("DASHBOARD_REFRESH_INTERVAL", "500ms")
        .env("RUNNER_DATA_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("the dashboard never listened: {e}"),
        }
    };
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut first = [0u8; 512];
    let n = stream.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).contains("200 OK"),
        "the stream opened"
    );
    // Keep reading, as a browser tab would, until the server ends the stream.
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    });
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(15) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some(status) = exited else {
        child.kill().unwrap();
        panic!("still running 10 s after --for 5s with an /events client open");
    };
    assert!(status.success(), "{status}");
    reader.join().unwrap();
}

/// One metric whose stored state cannot be read (here: a damaged partial) is named with its
/// error by the API and has no sample in `/metrics`; every other metric keeps answering there
/// (once, one damaged metric made both answer 503 for all of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_metric_leaves_the_others_answering() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (running, stop) = start(common::embedded_pipeline(dir.path()), port, "").await;
    assert_eq!(
        tokio::task::spawn_blocking(move || get(port, "/metrics", &[]).0)
            .await
            .unwrap(),
        200
    );
    let metric = running
        .metrics
        .borrow()
        .metrics()
        .iter()
        .find(|m| m.name() == "active_users")
        .unwrap()
        .state_key()
        .to_string();
    let now = chrono::Utc::now().timestamp_millis();
    let damaged = runner::store::PaneRecord {
        metric,
        pane_start: now - now % 5000,
        partition: 77,
        offset: 0,
        state: serde_json::json!({"not": "a state"}).into(),
    };
    running
        .store
        .as_ref()
        .unwrap()
        .write_panes(&[damaged])
        .await
        .unwrap();
    // Metric values are read every half second while asked for, and a reader is answered the
    // previous read while the next runs: the damage shows within a read or two.
    let started = std::time::Instant::now();
    let (scrape, api) = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (scrape, api) = tokio::task::spawn_blocking(move || {
            (get(port, "/metrics", &[]), get(port, "/api/metrics", &[]))
        })
        .await
        .unwrap();
        if api.1.contains("\"error\"") || started.elapsed() > Duration::from_secs(5) {
            break (scrape, api);
        }
    };
    assert_eq!(api.0, 200, "{}", api.1);
    let values: Vec<serde_json::Value> = serde_json::from_str(&api.1).unwrap();
    let broken = values.iter().find(|v| v["name"] == "active_users").unwrap();
    assert!(
        broken["error"]
            .as_str()
            .is_some_and(|e| e.contains("active_users")),
        "{broken}"
    );
    let active_items = values.iter().find(|v| v["name"] == "active_items").unwrap();
    assert!(
        active_items["value"].as_u64().is_some(),
        "the others answer: {active_items}"
    );
    assert_eq!(scrape.0, 200, "{}", scrape.1);
    assert!(
        !scrape.1.contains("name=\"active_users\"") && scrape.1.contains("name=\"active_items\""),
        "{}",
        scrape.1
    );
    stop.cancel();
    running.wait().await.unwrap();
}
