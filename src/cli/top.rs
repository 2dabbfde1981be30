//! `runner top`: a terminal view of a running runner, in the manner of `vector top`: the flow
//! with its rates, consumer lag per partition, every metric's current value and the alerts,
//! read from the runner's JSON API (`/api/topology`, `/api/metrics`, `/api/alerts`,
//! `/api/health`) and redrawn every interval, so it works over SSH against any runner whose
//! dashboard port it can reach.

use crate::alert::state::Status;
use crate::base::short;
use crate::dashboard::api::{Alerts, Health, MetricValue, Topology};
use anyhow::Context;
use crossterm::event::{self, Event, KeyCode, KeyModifiers};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Where to read and how often.
pub struct TopOptions {
    /// The runner's dashboard address, e.g. `http://127.0.0.1:8050`.
    pub url: String,
    /// The dashboard token, when it has one.
    pub token: Option<String>,
    pub interval: Duration,
}

/// What one screen shows, taken from the API's answers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    /// (stage, events/s, total) along the flow.
    pub flow: Vec<(String, f64, u64)>,
    /// (partition, end offset, lag, events/s in).
    pub partitions: Vec<(i64, i64, i64, f64)>,
    /// (metric, value as text).
    pub metrics: Vec<(String, String)>,
    /// (status, alert, labels).
    pub alerts: Vec<(String, String, String)>,
    /// (where and what, events/s, total) where events leave the flow.
    pub drops: Vec<(String, f64, u64)>,
    /// Event to stored, p50 and p99 (ms).
    pub latency: Option<(u64, u64)>,
}

impl Model {
    /// Builds the screen from the four API answers.
    pub fn from_api(
        topology: &Topology,
        metrics: &[MetricValue],
        alerts: &Alerts,
        health: &Health,
    ) -> Model {
        let flow = [
            ("generated", "generator"),
            ("consumed", "consumer"),
            ("stored", "store"),
        ]
        .iter()
        .map(|(label, id)| {
            let node = topology.node(id);
            (
                label.to_string(),
                node.and_then(|n| n.rate).unwrap_or(0.0),
                node.and_then(|n| n.total).unwrap_or(0),
            )
        })
        .collect();
        let partitions = topology
            .node("transport")
            .and_then(|n| n.partitions.as_ref())
            .map(|ps| {
                ps.iter()
                    .map(|p| (i64::from(p.partition), p.end_offset, p.lag, p.rate_in))
                    .collect()
            })
            .unwrap_or_default();
        let metrics = metrics
            .iter()
            .map(|m| (m.name.clone(), value_text(&m.value)))
            .collect();
        let alerts = alerts
            .active
            .iter()
            .map(|a| {
                let labels = a
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let status = match a.status {
                    Status::Firing => "firing",
                    Status::Pending => "pending",
                };
                (status.to_string(), a.alert.clone(), labels)
            })
            .collect();
        let drops = topology
            .drops
            .iter()
            .map(|d| (format!("{}: {}", d.at, d.what), d.rate, d.total))
            .collect();
        let latency = health
            .visible_latency_p50_ms
            .zip(health.visible_latency_p99_ms);
        Model {
            flow,
            partitions,
            metrics,
            alerts,
            drops,
            latency,
        }
    }
}

/// A metric value in one short line: a number, the top of a ranking, the biggest groups.
fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) => short(n.as_f64().unwrap_or(0.0)),
        Value::Array(a) => a
            .iter()
            .take(3)
            .map(|e| {
                format!(
                    "{} ({})",
                    e["key"].as_str().unwrap_or("?"),
                    short(e["count"].as_f64().unwrap_or(0.0))
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(m) => {
            let mut entries: Vec<(&String, f64)> = m
                .iter()
                .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                .collect();
            entries.sort_by(|a, b| b.1.total_cmp(&a.1));
            entries
                .iter()
                .take(4)
                .map(|(k, n)| format!("{k} {}", short(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        }
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// One API answer, as the dashboard's type for it.
async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    opts: &TopOptions,
    path: &str,
) -> anyhow::Result<T> {
    let mut req = client.get(format!("{}{path}", opts.url.trim_end_matches('/')));
    if let Some(t) = &opts.token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {}{path}", opts.url))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("cannot read the answer of {}{path}", opts.url))?;
    if !status.is_success() {
        let error = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default();
        anyhow::bail!("{}{path} answered {status}: {error}", opts.url);
    }
    serde_json::from_slice(&body).with_context(|| {
        format!(
            "{}{path} did not answer what this runner expects (a runner of another version?)",
            opts.url
        )
    })
}

/// Reads the four API answers.
async fn fetch(client: &reqwest::Client, opts: &TopOptions) -> anyhow::Result<Model> {
    let (topology, metrics, alerts, health) = tokio::try_join!(
        get::<Topology>(client, opts, "/api/topology"),
        get::<Vec<MetricValue>>(client, opts, "/api/metrics"),
        get::<Alerts>(client, opts, "/api/alerts"),
        get::<Health>(client, opts, "/api/health")
    )?;
    Ok(Model::from_api(&topology, &metrics, &alerts, &health))
}

/// Puts the terminal back however `run` ends.
struct Screen;

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = crossterm::execute!(
            std::io::stdout(),
            LeaveAlternateScreen,
            crossterm::cursor::Show
        );
    }
}

/// Runs the view until q, Esc or Ctrl-C. The first read must succeed (a wrong address is an
/// error, not an empty screen); later failures show on the screen with the last values kept.
pub fn run(opts: TopOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let mut model = rt.block_on(fetch(&client, &opts)).with_context(|| {
        format!(
            "runner top: no runner answers at {} (its dashboard address; --url)",
            opts.url
        )
    })?;
    enable_raw_mode().context("runner top needs a terminal")?;
    let _screen = Screen;
    crossterm::execute!(std::io::stdout(), EnterAlternateScreen)?;
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    let mut status = Ok(chrono::Utc::now());
    loop {
        terminal.draw(|f| draw(f, &opts.url, &model, &status))?;
        let until = Instant::now() + opts.interval;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if event::poll(left)? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
            }
        }
        match rt.block_on(fetch(&client, &opts)) {
            Ok(m) => {
                model = m;
                status = Ok(chrono::Utc::now());
            }
            Err(e) => status = Err(format!("{e:#}")),
        }
    }
}

fn draw(
    f: &mut Frame,
    url: &str,
    m: &Model,
    status: &Result<chrono::DateTime<chrono::Utc>, String>,
) {
    let head = Style::default().add_modifier(Modifier::BOLD);
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Length(m.partitions.len().max(3) as u16 + 3),
            Constraint::Min(6),
            Constraint::Length(m.drops.len() as u16 + 3),
        ])
        .split(f.area());
    let title = match status {
        Ok(at) => Line::styled(
            format!(
                "runner top · {url} · updated {} UTC · q quits",
                at.format("%H:%M:%S")
            ),
            head,
        ),
        Err(e) => Line::styled(
            format!("runner top · {url} · disconnected: {e}"),
            Style::default().fg(Color::Red),
        ),
    };
    f.render_widget(Paragraph::new(title), rows[0]);

    let top = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(45), Constraint::Percentage(55)])
        .split(rows[1]);
    let flow = Table::new(
        m.flow.iter().map(|(stage, rate, total)| {
            Row::new(vec![
                Cell::from(stage.clone()),
                Cell::from(format!("{rate:.1}/s")),
                Cell::from(total.to_string()),
            ])
        }),
        [
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Min(8),
        ],
    )
    .header(Row::new(vec!["stage", "rate", "total"]).style(head))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(match m.latency {
                Some((p50, p99)) => format!("flow · event→stored p50 {p50} ms p99 {p99} ms"),
                None => "flow".into(),
            }),
    );
    f.render_widget(flow, top[0]);
    let lag = Table::new(
        m.partitions.iter().map(|(p, end, lag, rate)| {
            Row::new(vec![
                p.to_string(),
                end.to_string(),
                lag.to_string(),
                format!("{rate:.1}/s"),
            ])
        }),
        [
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Min(8),
        ],
    )
    .header(Row::new(vec!["partition", "end offset", "lag", "in"]).style(head))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(if m.partitions.is_empty() {
                "partitions (embedded queue: none)"
            } else {
                "partitions"
            }),
    );
    f.render_widget(lag, top[1]);

    let mid = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(60), Constraint::Percentage(40)])
        .split(rows[2]);
    let metrics = Table::new(
        m.metrics
            .iter()
            .map(|(name, value)| Row::new(vec![name.clone(), value.clone()])),
        [Constraint::Length(28), Constraint::Min(10)],
    )
    .header(Row::new(vec!["metric", "value"]).style(head))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title("metrics (current window)"),
    );
    f.render_widget(metrics, mid[0]);
    let alerts = Table::new(
        m.alerts.iter().map(|(status, alert, labels)| {
            let style = if status == "firing" {
                Style::default().fg(Color::Red)
            } else {
                Style::default().fg(Color::Yellow)
            };
            Row::new(vec![status.clone(), alert.clone(), labels.clone()]).style(style)
        }),
        [
            Constraint::Length(8),
            Constraint::Length(22),
            Constraint::Min(6),
        ],
    )
    .header(Row::new(vec!["status", "alert", "labels"]).style(head))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(format!("alerts ({} active)", m.alerts.len())),
    );
    f.render_widget(alerts, mid[1]);

    let drops = Table::new(
        m.drops.iter().map(|(what, rate, total)| {
            let style = if *rate > 0.0 {
                Style::default().fg(Color::Yellow)
            } else {
                Style::default()
            };
            Row::new(vec![
                what.clone(),
                format!("{rate:.1}/s"),
                total.to_string(),
            ])
            .style(style)
        }),
        [
            Constraint::Length(40),
            Constraint::Length(12),
            Constraint::Min(8),
        ],
    )
    .header(Row::new(vec!["where events leave the flow", "rate", "total"]).style(head))
    .block(Block::default().borders(Borders::ALL));
    f.render_widget(drops, rows[3]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_screen_is_built_from_the_api_answers() {
        // The answers as the dashboard writes them, read back as `runner top` reads them.
        let topology: Topology = serde_json::from_value(json!({
            "nodes": [
                { "id": "generator", "label": "generator", "running": true, "rate": 1000.0, "total": 5000 },
                { "id": "transport", "label": "Kafka topic t", "lag": 12, "partitions": [{ "partition": 0, "end_offset": 900, "lag": 12, "rate_in": 480.5 }] },
                { "id": "consumer", "label": "consumer group", "rate": 990.0, "total": 4980, "members": [] },
                { "id": "store", "label": "s", "rate": 990.0, "total": 4970, "failing_since": null },
                { "id": "alerts", "label": "alerts", "firing": null },
            ],
            "edges": [],
            "drops": [{ "at": "consumer", "what": "rejected", "rate": 1.5, "total": 3 }],
        }))
        .unwrap();
        let metrics: Vec<MetricValue> = serde_json::from_value(json!([
            { "name": "active_users", "description": "", "window_start": 0, "window_end": 1, "value": 957 },
            { "name": "top_items", "description": "", "window_start": 0, "window_end": 1, "value": [{ "key": "item_1", "count": 12000 }] },
            { "name": "types", "description": "", "window_start": 0, "window_end": 1, "value": { "view": 30, "click": 50 } },
        ]))
        .unwrap();
        let alerts: Alerts = serde_json::from_value(json!({
            "firing": 1, "pending": 0, "recent": [], "error": null,
            "active": [{ "status": "firing", "alert": "hot_item", "severity": "warning", "labels": { "item": "item_1" },
                         "value": 3.0, "active_since": "2026-01-01T00:00:00Z", "fired_at": null }],
        }))
        .unwrap();
        let health = Health {
            visible_latency_p50_ms: Some(40),
            visible_latency_p99_ms: Some(90),
            ..Health::default()
        };
        let m = Model::from_api(&topology, &metrics, &alerts, &health);
        assert_eq!(m.flow[0], ("generated".into(), 1000.0, 5000));
        assert_eq!(m.partitions, vec![(0, 900, 12, 480.5)]);
        assert_eq!(m.metrics[1].1, "item_1 (12.0k)");
        assert_eq!(m.metrics[2].1, "click 50, view 30");
        assert_eq!(
            m.alerts,
            vec![("firing".into(), "hot_item".into(), "item=item_1".into())]
        );
        assert_eq!(m.drops, vec![("consumer: rejected".into(), 1.5, 3)]);
        assert_eq!(m.latency, Some((40, 90)));
    }
}
