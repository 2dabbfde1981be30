//! The JSON API's answers as types: the dashboard serializes them (`/api/topology`,
//! `/api/alerts`, `/api/health`; `/api/metrics` is a list of [`MetricValue`]) and `runner top`
//! reads the same types, so the two cannot drift apart.

use crate::alert::{ActiveAlert, Notification};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::aggregate::MetricValue;

/// `/api/topology`: the flow's nodes, the edges between them with their rates, and where events
/// leave it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub drops: Vec<Drop>,
}

impl Topology {
    /// The node with this id (`generator`, `transport`, `consumer`, `store`, `metrics`,
    /// `alerts`).
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// One stage of the flow; each kind of node fills the fields it has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub label: String,
    /// The generator: whether it runs in this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// Events through this stage since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Events per second through this stage now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The transport: its partitions as this consumer measures them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionRow>>,
    /// The transport: the consumer's total lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The consumer: the members of its group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
    /// The store: since when its writes fail (RFC 3339; null: they do not).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub failing_since: Option<Option<String>>,
    /// The metrics: how many run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// The alerts: how many fire (null: the store could not be read).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub firing: Option<Option<usize>>,
}

/// A key that is there, null or not (missing: `None` by the field's default), so a node that
/// has the field with no value reads back as it was written.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// One partition of the transport.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionRow {
    pub partition: i32,
    pub end_offset: i64,
    pub lag: i64,
    /// Events per second arriving on it.
    pub rate_in: f64,
}

/// One member of the consumer group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub host: String,
    pub partitions: Vec<i32>,
}

/// Events moving from one node to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub rate: f64,
}

/// Where events leave the flow, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drop {
    /// The node they leave at.
    pub at: String,
    pub what: String,
    pub total: u64,
    pub rate: f64,
    /// Dead letters by reason (the consumer's drop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<ReasonRow>>,
}

/// Dead letters of one reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasonRow {
    pub reason: String,
    pub total: u64,
    pub rate: f64,
}

/// `/api/alerts`: pending and firing instances and the latest notifications.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Alerts {
    pub firing: usize,
    pub pending: usize,
    pub active: Vec<ActiveAlert>,
    pub recent: Vec<Notification>,
    /// Why the store could not be read (then the lists are empty).
    pub error: Option<String>,
}

/// `/api/health`: the counters, and what is wrong now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Every counter of the run by name (`generated`, `consumed`, `stored`, ...).
    #[serde(flatten)]
    pub counters: BTreeMap<String, u64>,
    /// Since when store writes fail (RFC 3339).
    pub store_failing_since: Option<String>,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<String, u64>,
    pub consumer_lag: Vec<PartitionLag>,
    /// From an event's time to its being stored and counted: median and 99th percentile.
    pub visible_latency_p50_ms: Option<u64>,
    pub visible_latency_p99_ms: Option<u64>,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_reload: Option<String>,
    pub last_reload_error: Option<String>,
    pub needs_restart: Vec<String>,
    pub last_reload_changes: Vec<String>,
}

/// One partition's lag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub lag: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the dashboard writes reads back the same, with the keys its templates test for
    /// present even when empty (`firing` and `failing_since` as null).
    #[test]
    fn an_answer_reads_back_as_it_was_written() {
        let topology = Topology {
            nodes: vec![
                Node {
                    id: "store".into(),
                    failing_since: Some(None),
                    total: Some(3),
                    ..Node::default()
                },
                Node {
                    id: "alerts".into(),
                    firing: Some(None),
                    ..Node::default()
                },
            ],
            edges: vec![],
            drops: vec![Drop {
                reasons: Some(vec![]),
                ..Drop::default()
            }],
        };
        let json = serde_json::to_value(&topology).unwrap();
        assert!(json["nodes"][0]["failing_since"].is_null());
        assert!(json["nodes"][1].as_object().unwrap().contains_key("firing"));
        assert!(!json["nodes"][1]
            .as_object()
            .unwrap()
            .contains_key("failing_since"));
        assert_eq!(serde_json::from_value::<Topology>(json).unwrap(), topology);
        let health = Health {
            counters: BTreeMap::from([("stored".to_string(), 7)]),
            visible_latency_p50_ms: Some(4),
            ..Health::default()
        };
        let json = serde_json::to_value(&health).unwrap();
        assert_eq!(json["stored"], 7, "counters are top-level keys");
        assert_eq!(serde_json::from_value::<Health>(json).unwrap(), health);
    }
}
