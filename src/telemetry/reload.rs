//! What the dashboard and logs say about hot reloads.

/// What the dashboard and logs say about reloads.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReloadStatus {
    /// Reloads applied.
    pub reloads: u64,
    /// Reload attempts rejected (the running version stayed).
    pub failures: u64,
    pub last_attempt: Option<chrono::DateTime<chrono::Utc>>,
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    /// The error of the last attempt, if it failed (file:line:column and message).
    pub last_error: Option<String>,
    /// Settings that changed but need a restart to apply, from the last reload.
    pub needs_restart: Vec<String>,
    /// What the last reload changed, as `key: live|reconnect|restart` (see `pipeline::diff`).
    pub last_changes: Vec<String>,
}
