//! What a channel sends: one instance's change, with its labels and rendered text. The same
//! record is stored as alert history, so the dashboard shows exactly what went out.

use super::config::AlertConfig;
use super::state::{fingerprint, Change, Labels, Transition};
pub use crate::store::Notification;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;

impl Notification {
    /// Builds the notification for a transition of `rule`'s instance at `now_ms`.
    pub fn new(
        pipeline: &str,
        rule: &AlertConfig,
        channels: &[String],
        thresholds: &BTreeMap<String, Value>,
        t: &Transition,
        now_ms: i64,
    ) -> Notification {
        let labels = labels_of(rule, &t.instance.labels);
        let at = ms(now_ms);
        let status = if t.change == Change::Resolved {
            "resolved"
        } else {
            "firing"
        };
        let mut n = Notification {
            id: uuid::Uuid::new_v4().to_string(),
            pipeline: pipeline.to_string(),
            alert: rule.name.clone(),
            status: status.to_string(),
            change: t.change,
            severity: rule.severity.clone(),
            labels,
            value: t.instance.value,
            message: String::new(),
            description: rule.description.clone(),
            fingerprint: fingerprint(&t.instance.labels),
            starts_at: ms(t.instance.fired_at.unwrap_or(t.instance.active_since)),
            ends_at: (t.change == Change::Resolved).then_some(at),
            at,
            channels: channels.to_vec(),
            silenced_by: None,
            alerts: Vec::new(),
        };
        n.message = n.render(&rule.message, thresholds).unwrap_or_else(|e| {
            format!("{} is {} (message template failed: {e})", n.alert, n.status)
        });
        n
    }

    /// Renders a template (a message or an email subject) over this notification.
    pub fn render(
        &self,
        template: &str,
        thresholds: &BTreeMap<String, Value>,
    ) -> Result<String, minijinja::Error> {
        self.render_in(&minijinja::Environment::new(), template, thresholds)
    }

    /// Renders a template of a JSON document (a webhook body): every value written into it is
    /// JSON-escaped, so `"{{ message }}"` stays one JSON string whatever the message holds, and
    /// `{{ labels | tojson }}` writes a whole value.
    pub fn render_json(
        &self,
        template: &str,
        thresholds: &BTreeMap<String, Value>,
    ) -> Result<String, minijinja::Error> {
        let mut env = minijinja::Environment::new();
        env.set_formatter(|out, _state, value| {
            let text = match value.is_safe() {
                // Output of `tojson` (and other filters that say it is safe) as it is.
                true => return write!(out, "{value}").map_err(minijinja::Error::from),
                false if value.is_none() || value.is_undefined() => String::new(),
                false => value.to_string(),
            };
            let quoted = serde_json::to_string(&text).expect("a string serializes");
            out.write_str(&quoted[1..quoted.len() - 1])
                .map_err(minijinja::Error::from)
        });
        self.render_in(&env, template, thresholds)
    }

    fn render_in(
        &self,
        env: &minijinja::Environment,
        template: &str,
        thresholds: &BTreeMap<String, Value>,
    ) -> Result<String, minijinja::Error> {
        let mut ctx = serde_json::to_value(self).expect("a notification serializes");
        // Templates name the rule's own labels directly (`labels.item`), without the ones added above.
        ctx["thresholds"] = serde_json::to_value(thresholds).expect("thresholds serialize");
        env.render_str(
            template,
            minijinja::Value::from(minijinja::value::Serde(&ctx)),
        )
    }

    /// A firing notification with every field set, to try templates on at load.
    pub fn sample() -> Notification {
        let at = ms(0);
        Notification {
            id: "sample".into(),
            pipeline: "pipeline".into(),
            alert: "alert".into(),
            status: "firing".into(),
            change: Change::Firing,
            severity: "warning".into(),
            labels: BTreeMap::from([("alertname".into(), "alert".into())]),
            value: Some(1.5),
            message: "a \"quoted\" message\nover two lines".into(),
            description: String::new(),
            fingerprint: "0".into(),
            starts_at: at,
            ends_at: None,
            at,
            channels: Vec::new(),
            silenced_by: None,
            alerts: Vec::new(),
        }
    }

    /// The plain-text body of an email or log line: message, description, labels, times.
    pub fn text(&self) -> String {
        let mut out = format!("{}\n\n", self.message);
        if !self.description.is_empty() {
            out.push_str(&format!("{}\n\n", self.description));
        }
        let change = serde_json::to_value(self.change)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        out.push_str(&format!(
            "alert:    {}\nstatus:   {} ({change})\nseverity: {}\n",
            self.alert, self.status, self.severity
        ));
        if let Some(v) = self.value {
            out.push_str(&format!("value:    {v}\n"));
        }
        out.push_str(&format!("since:    {}\n", self.starts_at.to_rfc3339()));
        if let Some(end) = self.ends_at {
            out.push_str(&format!("resolved: {}\n", end.to_rfc3339()));
        }
        out.push_str("labels:\n");
        for (k, v) in &self.labels {
            out.push_str(&format!("  {k} = {v}\n"));
        }
        if !self.alerts.is_empty() {
            out.push_str(&format!("\n{} alerts in this group:\n", self.alerts.len()));
            for a in &self.alerts {
                let labels: Vec<String> = a
                    .labels
                    .iter()
                    .filter(|(k, _)| !self.labels.contains_key(*k))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let value = a.value.map(|v| format!(" (value {v})")).unwrap_or_default();
                out.push_str(&format!(
                    "  [{}] {} {}{value}: {}\n",
                    a.status,
                    a.alert,
                    labels.join(", "),
                    a.message
                ));
            }
        }
        out.push_str(&format!(
            "\npipeline {}, notification {}\n",
            self.pipeline, self.id
        ));
        out
    }
}

/// Every label of an instance of `rule`, as notifications carry them and silences and routes
/// match them: the rule's labels, the instance's, `alertname` and `severity`.
pub fn labels_of(rule: &AlertConfig, instance: &Labels) -> Labels {
    let mut labels = rule.labels.clone();
    labels.extend(instance.clone());
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), rule.severity.clone());
    labels
}

fn ms(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::state::{Instance, Status};
    use crate::store::Labels;

    #[test]
    fn message_template_sees_labels_value_and_thresholds() {
        let rule: AlertConfig = toml::from_str(
            "name = \"hot_item\"\ncondition = \"true\"\nmessage = \"{{ labels.item }} at {{ value }} > {{ thresholds.high }}\"",
        )
        .unwrap();
        let instance = Instance {
            labels: Labels::from([("item".into(), "i7".into())]),
            value: Some(1500.0),
            status: Status::Firing,
            active_since: 0,
            fired_at: Some(1_000),
            notified_at: Some(1_000),
            cleared_at: None,
            silenced_by: None,
        };
        let t = Transition {
            change: Change::Firing,
            instance,
        };
        let thresholds = BTreeMap::from([("high".to_string(), serde_json::json!(1000))]);
        let n = Notification::new("p", &rule, &["log".into()], &thresholds, &t, 1_000);
        assert_eq!(n.message, "i7 at 1500.0 > 1000");
        assert_eq!(n.labels["alertname"], "hot_item");
        assert_eq!(n.status, "firing");
        assert!(n.text().contains("item = i7"));
    }

    #[test]
    fn a_json_body_template_escapes_what_it_writes_into_strings() {
        let mut n = Notification::sample();
        n.labels.insert("item".into(), "i\"7".into());
        let body = n
            .render_json(
                r#"{"text": "{{ alert }} is {{ status }}: {{ message }} ({{ value }})", "labels": {{ labels | tojson }}, "none": "{{ ends_at }}"}"#,
                &BTreeMap::new(),
            )
            .unwrap();
        let v: Value = serde_json::from_str(&body).expect("the body is JSON");
        assert_eq!(
            v["text"],
            "alert is firing: a \"quoted\" message\nover two lines (1.5)"
        );
        assert_eq!(v["labels"]["item"], "i\"7");
        assert_eq!(v["none"], "");
    }
}
