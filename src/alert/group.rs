//! Grouping as Alertmanager does it: the notifications of routed rules gather in groups (one per
//! route and value of its `group_by` labels), and each group sends one notification carrying all
//! its alerts — `group_wait` after the group appears, then at most every `group_interval` when
//! something changed (an alert fired or resolved), and every `repeat_interval` while alerts fire
//! and nothing changes. Pure and clock-free; the evaluator stores the groups with the rule states,
//! so a restart neither loses a waiting group nor sends one again.

use super::route::Leaf;
use super::state::{fingerprint, Change};
use crate::store::{Labels, Notification};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One group: its alerts (the latest notification of each instance) and its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Group {
    route: String,
    channels: Vec<String>,
    labels: Labels,
    group_wait_ms: i64,
    group_interval_ms: i64,
    repeat_ms: i64,
    /// By rule and instance fingerprint.
    alerts: BTreeMap<String, Notification>,
    /// An alert fired or resolved since the group was last sent.
    changed: bool,
    created_ms: i64,
    sent_ms: Option<i64>,
}

/// Every open group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Groups {
    groups: BTreeMap<String, Group>,
}

impl Groups {
    /// Adds a routed notification to the group of each route it goes to. A silenced one takes its
    /// alert out of its groups instead (a silenced alert is not repeated with the others), without
    /// counting as a change.
    pub fn add(&mut self, n: &Notification, leaves: &[&Leaf], now_ms: i64) {
        let alert = format!("{}/{}", n.alert, n.fingerprint);
        for leaf in leaves {
            let labels = leaf.group_labels(&n.labels);
            let key = format!(
                "{}{}",
                leaf.path,
                serde_json::to_string(&labels).expect("labels serialize")
            );
            if n.silenced_by.is_some() {
                if let Some(g) = self.groups.get_mut(&key) {
                    g.alerts.remove(&alert);
                }
                continue;
            }
            let g = self.groups.entry(key).or_insert_with(|| Group {
                route: leaf.path.clone(),
                channels: leaf.channels.clone(),
                labels,
                group_wait_ms: leaf.group_wait_ms,
                group_interval_ms: leaf.group_interval_ms,
                repeat_ms: leaf.repeat_ms,
                alerts: BTreeMap::new(),
                changed: false,
                created_ms: now_ms,
                sent_ms: None,
            });
            // A repeat of one alert is the group's repeat_interval's business, not a change.
            if n.change != Change::Repeat || !g.alerts.contains_key(&alert) {
                g.changed = true;
            }
            let mut kept = n.clone();
            kept.channels = leaf.channels.clone();
            g.alerts.insert(alert.clone(), kept);
        }
        // A group whose every alert was silenced closes; it opens again when one comes back.
        self.groups.retain(|_, g| !g.alerts.is_empty());
    }

    /// The group notifications due at `now_ms`; sent groups forget their resolved alerts, and a
    /// group left with none is closed.
    pub fn flush(&mut self, pipeline: &str, now_ms: i64) -> Vec<Notification> {
        let mut out = Vec::new();
        for (key, g) in &mut self.groups {
            let firing = g.alerts.values().any(|a| a.status == "firing");
            let due = match g.sent_ms {
                None => now_ms - g.created_ms >= g.group_wait_ms,
                Some(sent) if g.changed => now_ms - sent >= g.group_interval_ms,
                Some(sent) => firing && now_ms - sent >= g.repeat_ms,
            };
            if !due {
                continue;
            }
            out.push(g.notification(key, pipeline, now_ms));
            g.alerts.retain(|_, a| a.status == "firing");
            g.changed = false;
            g.sent_ms = Some(now_ms);
        }
        // A group is never empty between calls (`add` closes one it empties), so one emptied by
        // sending its resolutions is closed here.
        self.groups.retain(|_, g| !g.alerts.is_empty());
        out
    }
}

impl Group {
    /// The one notification of the group: every alert in it, firing ones first.
    fn notification(&self, key: &str, pipeline: &str, now_ms: i64) -> Notification {
        let mut alerts: Vec<Notification> = self.alerts.values().cloned().collect();
        alerts.sort_by_key(|a| (a.status != "firing", a.starts_at));
        let firing = alerts.iter().filter(|a| a.status == "firing").count();
        let resolved = alerts.len() - firing;
        let names: Vec<&str> = {
            let mut n: Vec<&str> = alerts.iter().map(|a| a.alert.as_str()).collect();
            n.dedup();
            n
        };
        let alert = match names.as_slice() {
            [one] => one.to_string(),
            _ => names.join(", "),
        };
        let severity = alerts
            .first()
            .map(|a| a.severity.clone())
            .unwrap_or_default();
        let mut labels = self.labels.clone();
        labels.retain(|_, v| !v.is_empty());
        let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let message = format!(
            "{firing} firing{} ({})",
            if resolved > 0 {
                format!(", {resolved} resolved")
            } else {
                String::new()
            },
            if shown.is_empty() {
                alert.clone()
            } else {
                shown.join(", ")
            }
        );
        let at = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
        Notification {
            id: uuid::Uuid::new_v4().to_string(),
            pipeline: pipeline.to_string(),
            alert,
            status: if firing > 0 { "firing" } else { "resolved" }.into(),
            change: match (firing > 0, self.changed) {
                (false, _) => Change::Resolved,
                (true, true) => Change::Firing,
                (true, false) => Change::Repeat,
            },
            severity,
            fingerprint: fingerprint(&BTreeMap::from([("group".to_string(), key.to_string())])),
            labels,
            value: None,
            message,
            description: format!("route {}: {} alert(s)", self.route, alerts.len()),
            starts_at: alerts.iter().map(|a| a.starts_at).min().unwrap_or(at),
            ends_at: (firing == 0).then_some(at),
            at,
            channels: self.channels.clone(),
            silenced_by: None,
            alerts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf() -> Leaf {
        Leaf {
            path: "route".into(),
            channels: vec!["email".into()],
            group_by: Some(vec!["alertname".into()]),
            group_wait_ms: 30_000,
            group_interval_ms: 300_000,
            repeat_ms: 3_600_000,
        }
    }

    fn alert(item: usize, change: Change) -> Notification {
        let mut n = Notification::sample();
        n.alert = "hot_item".into();
        n.labels = Labels::from([
            ("alertname".to_string(), "hot_item".to_string()),
            ("item".to_string(), format!("i{item}")),
        ]);
        n.fingerprint = format!("f{item}");
        n.change = change;
        n.status = if change == Change::Resolved {
            "resolved"
        } else {
            "firing"
        }
        .into();
        n
    }

    #[test]
    fn forty_alerts_of_one_group_are_one_notification_after_group_wait() {
        let mut g = Groups::default();
        let l = leaf();
        for i in 0..40 {
            g.add(&alert(i, Change::Firing), &[&l], i as i64 * 100);
        }
        assert!(g.flush("p", 29_999).is_empty(), "group_wait holds it");
        let sent = g.flush("p", 30_000);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].alerts.len(), 40);
        assert_eq!(sent[0].channels, ["email"]);
        assert_eq!(sent[0].labels["alertname"], "hot_item");
        assert_eq!(sent[0].message, "40 firing (alertname=hot_item)");
        assert!(g.flush("p", 31_000).is_empty(), "nothing changed");
    }

    #[test]
    fn changes_wait_for_group_interval_and_an_unchanged_group_repeats() {
        let mut g = Groups::default();
        let l = leaf();
        g.add(&alert(1, Change::Firing), &[&l], 0);
        assert_eq!(g.flush("p", 30_000).len(), 1);
        g.add(&alert(2, Change::Firing), &[&l], 40_000);
        g.add(&alert(1, Change::Repeat), &[&l], 40_000);
        assert!(g.flush("p", 329_999).is_empty(), "group_interval");
        let sent = g.flush("p", 330_000);
        assert_eq!(sent[0].alerts.len(), 2);
        assert_eq!(sent[0].change, Change::Firing);
        g.add(&alert(1, Change::Repeat), &[&l], 400_000);
        assert!(
            g.flush("p", 400_000).is_empty(),
            "a repeat of one alert is not a change"
        );
        let repeat = g.flush("p", 330_000 + 3_600_000);
        assert_eq!(repeat[0].change, Change::Repeat);
        assert_eq!(repeat[0].alerts.len(), 2);
    }

    #[test]
    fn resolved_alerts_are_sent_once_and_an_empty_group_closes() {
        let mut g = Groups::default();
        let l = leaf();
        g.add(&alert(1, Change::Firing), &[&l], 0);
        g.flush("p", 30_000);
        g.add(&alert(1, Change::Resolved), &[&l], 60_000);
        let sent = g.flush("p", 330_000);
        assert_eq!(sent[0].status, "resolved");
        assert_eq!(sent[0].change, Change::Resolved);
        assert!(g.groups.is_empty());
    }

    #[test]
    fn a_silenced_alert_leaves_its_group_quietly() {
        let mut g = Groups::default();
        let l = leaf();
        g.add(&alert(1, Change::Firing), &[&l], 0);
        g.add(&alert(2, Change::Firing), &[&l], 0);
        g.flush("p", 30_000);
        let mut silenced = alert(2, Change::Repeat);
        silenced.silenced_by = Some("s".into());
        g.add(&silenced, &[&l], 40_000);
        let repeat = g.flush("p", 30_000 + 3_600_000);
        assert_eq!(repeat[0].alerts.len(), 1, "only the unsilenced one repeats");
    }
}
