//! The log channel: one structured line (tracing) per notification.

use super::Channel;
use crate::alert::notification::Notification;
use async_trait::async_trait;

pub(super) struct LogChannel;

#[async_trait]
impl Channel for LogChannel {
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()> {
        let labels = serde_json::to_string(&n.labels).unwrap_or_default();
        if n.status == "resolved" {
            tracing::info!(target: "runner::alert", alert = %n.alert, status = %n.status, severity = %n.severity, %labels, value = ?n.value, "{}", n.message);
        } else {
            tracing::warn!(target: "runner::alert", alert = %n.alert, status = %n.status, change = ?n.change, severity = %n.severity, %labels, value = ?n.value, "{}", n.message);
        }
        Ok(())
    }
}
