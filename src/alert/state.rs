//! The life cycle of one alert instance, as Prometheus and Alertmanager define it: a condition
//! that starts holding makes the instance *pending*; once it has held for `for` it is *firing*
//! and notified; while it keeps firing it is notified again every `repeat_interval`; when it
//! stops holding, a firing instance is *resolved* (and notified), a pending one just disappears.
//! With `keep_firing_for` (Prometheus's, Grafana's "recovering"), a firing instance whose
//! condition stops holding keeps firing that long first, so a flapping condition is one alert.
//!
//! Pure and clock-free (times are passed in), so every transition is unit-tested and the whole
//! state can be stored and restored across a restart without re-sending anything.

pub use crate::store::{Change, Labels};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Where an instance is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Holding, but not yet for `for`.
    Pending,
    /// Held for `for`; notified.
    Firing,
}

/// One series of a rule (one item above the threshold, say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub labels: Labels,
    /// The value the condition reported with it, if any.
    pub value: Option<f64>,
    pub status: Status,
    /// When the condition started holding, ms since the epoch.
    pub active_since: i64,
    /// When it fired.
    pub fired_at: Option<i64>,
    /// When a notification was last sent for it.
    pub notified_at: Option<i64>,
    /// Since when a firing instance's condition has not held (it keeps firing for
    /// `keep_firing_for` from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<i64>,
    /// The silence its labels match now, if any: it changes state as ever, but nothing is sent
    /// for it (set by the evaluator, which knows the silences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
}

/// A notification-worthy change of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub change: Change,
    pub instance: Instance,
}

/// How long a condition must hold, and how often a firing alert is repeated (ms).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub for_ms: i64,
    pub repeat_ms: i64,
    /// How long a firing instance keeps firing after its condition stops holding.
    pub keep_firing_ms: i64,
}

/// Every live instance of one rule, keyed by [`key`] of its labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub instances: BTreeMap<String, Instance>,
}

/// The identity of a label set: its canonical encoding (JSON of the sorted labels, every name
/// and value quoted and escaped), so two different sets never share a key. (Joining `k=v` with
/// commas made `{a: "1,b=2"}` and `{a: "1", b: "2"}` one instance.)
pub fn key(labels: &Labels) -> String {
    serde_json::to_string(labels).expect("labels serialize")
}

/// A short, stable fingerprint of a label set for notifications (like Alertmanager's): 64-bit
/// FNV-1a of [`key`], in hex. Identity inside the runner uses the full key.
pub fn fingerprint(labels: &Labels) -> String {
    let h = crate::base::fnv1a(key(labels).as_bytes());
    format!("{h:016x}")
}

impl RuleState {
    /// The same state with every instance under its current [`key`] (states stored by an
    /// earlier version used another key format; their instances keep their identity).
    pub fn rekeyed(self) -> RuleState {
        RuleState {
            instances: self
                .instances
                .into_values()
                .map(|i| (key(&i.labels), i))
                .collect(),
        }
    }
}

impl RuleState {
    /// Advances every instance to `now`, given the instances whose condition holds now.
    /// Returns the notifications due, in instance order.
    pub fn step(
        &mut self,
        now: i64,
        holding: Vec<(Labels, Option<f64>)>,
        timing: Timing,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut seen = HashSet::with_capacity(holding.len());
        for (labels, value) in holding {
            let k = key(&labels);
            if !seen.insert(k.clone()) {
                continue; // the condition listed the same instance twice
            }
            let instance = self.instances.entry(k).or_insert_with(|| Instance {
                labels,
                value,
                status: Status::Pending,
                active_since: now,
                fired_at: None,
                notified_at: None,
                cleared_at: None,
                silenced_by: None,
            });
            instance.value = value;
            instance.cleared_at = None;
            match instance.status {
                Status::Pending if now - instance.active_since >= timing.for_ms => {
                    instance.status = Status::Firing;
                    instance.fired_at = Some(now);
                    instance.notified_at = Some(now);
                    out.push(Transition {
                        change: Change::Firing,
                        instance: instance.clone(),
                    });
                }
                Status::Firing
                    if instance
                        .notified_at
                        .is_none_or(|t| now - t >= timing.repeat_ms) =>
                {
                    instance.notified_at = Some(now);
                    out.push(Transition {
                        change: Change::Repeat,
                        instance: instance.clone(),
                    });
                }
                _ => {}
            }
        }
        let gone: Vec<String> = self
            .instances
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            let instance = self.instances.get_mut(&k).expect("listed above");
            if instance.status == Status::Firing {
                let cleared = *instance.cleared_at.get_or_insert(now);
                if now - cleared < timing.keep_firing_ms {
                    continue; // recovering: still firing, quietly
                }
            }
            let instance = self.instances.remove(&k).expect("listed above");
            if instance.status == Status::Firing {
                out.push(Transition {
                    change: Change::Resolved,
                    instance,
                });
            }
        }
        out
    }

    /// Resolves every firing instance (the rule was removed); pending ones just end.
    pub fn resolve_all(&mut self) -> Vec<Transition> {
        self.step(
            0,
            Vec::new(),
            Timing {
                for_ms: 0,
                repeat_ms: 0,
                keep_firing_ms: 0,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        for_ms: 10_000,
        repeat_ms: 60_000,
        keep_firing_ms: 0,
    };

    fn item(id: &str) -> (Labels, Option<f64>) {
        (
            Labels::from([("item".to_string(), id.to_string())]),
            Some(1.0),
        )
    }

    fn changes(t: &[Transition]) -> Vec<Change> {
        t.iter().map(|t| t.change).collect()
    }

    #[test]
    fn different_label_sets_never_share_an_instance() {
        let tricky = Labels::from([("a".to_string(), "1,b=2".to_string())]);
        let plain = Labels::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        assert_ne!(key(&tricky), key(&plain));
        assert_ne!(fingerprint(&tricky), fingerprint(&plain));
        let mut s = RuleState::default();
        s.step(0, vec![(tricky, None), (plain, None)], T);
        assert_eq!(s.instances.len(), 2, "two instances, not one");
    }

    #[test]
    fn a_state_stored_with_old_keys_keeps_its_instances() {
        let mut s = RuleState::default();
        s.step(0, vec![item("a")], T);
        let old = RuleState {
            instances: s
                .instances
                .into_values()
                .map(|i| ("item=a".to_string(), i))
                .collect(),
        };
        let mut s = old.rekeyed();
        assert!(
            s.step(10_000, vec![item("a")], T)
                .iter()
                .any(|t| t.change == Change::Firing),
            "the pending instance went on to fire"
        );
    }

    #[test]
    fn pending_until_for_has_passed_then_fires_once() {
        let mut s = RuleState::default();
        assert!(s.step(0, vec![item("a")], T).is_empty());
        assert_eq!(s.instances[&key(&item("a").0)].status, Status::Pending);
        assert!(s.step(5_000, vec![item("a")], T).is_empty());
        assert_eq!(
            changes(&s.step(10_000, vec![item("a")], T)),
            [Change::Firing]
        );
        assert!(
            s.step(15_000, vec![item("a")], T).is_empty(),
            "no second notification while firing"
        );
    }

    #[test]
    fn zero_for_fires_at_the_first_evaluation() {
        let mut s = RuleState::default();
        assert_eq!(
            changes(&s.step(0, vec![item("a")], Timing { for_ms: 0, ..T })),
            [Change::Firing]
        );
    }

    #[test]
    fn repeats_only_after_the_repeat_interval() {
        let mut s = RuleState::default();
        s.step(0, vec![item("a")], T);
        s.step(10_000, vec![item("a")], T);
        assert!(s.step(69_999, vec![item("a")], T).is_empty());
        assert_eq!(
            changes(&s.step(70_000, vec![item("a")], T)),
            [Change::Repeat]
        );
        assert!(s.step(100_000, vec![item("a")], T).is_empty());
        assert_eq!(
            changes(&s.step(130_000, vec![item("a")], T)),
            [Change::Repeat]
        );
    }

    #[test]
    fn firing_resolves_and_pending_disappears_quietly() {
        let mut s = RuleState::default();
        s.step(0, vec![item("a")], T);
        s.step(10_000, vec![item("a"), item("b")], T);
        let t = s.step(12_000, vec![], T);
        assert_eq!(
            changes(&t),
            [Change::Resolved],
            "only the firing one is notified"
        );
        assert_eq!(t[0].instance.labels["item"], "a");
        assert!(s.instances.is_empty());
    }

    #[test]
    fn flapping_shorter_than_for_never_fires() {
        let mut s = RuleState::default();
        for tick in 0..20 {
            let holding = if tick % 2 == 0 {
                vec![item("a")]
            } else {
                vec![]
            };
            assert!(s.step(tick * 5_000, holding, T).is_empty(), "tick {tick}");
        }
    }

    #[test]
    fn keep_firing_for_rides_out_a_flap_then_resolves() {
        let t = Timing {
            keep_firing_ms: 15_000,
            ..T
        };
        let mut s = RuleState::default();
        s.step(0, vec![item("a")], t);
        assert_eq!(
            changes(&s.step(10_000, vec![item("a")], t)),
            [Change::Firing]
        );
        assert!(
            s.step(15_000, vec![], t).is_empty(),
            "recovering, still firing"
        );
        assert_eq!(s.instances[&key(&item("a").0)].status, Status::Firing);
        assert!(
            s.step(20_000, vec![item("a")], t).is_empty(),
            "holds again: no second firing"
        );
        assert!(s.step(25_000, vec![], t).is_empty());
        assert!(
            s.step(39_999, vec![], t).is_empty(),
            "the clock restarted when it cleared again at 25 s"
        );
        assert_eq!(changes(&s.step(40_000, vec![], t)), [Change::Resolved]);
        assert!(s.instances.is_empty());
    }

    #[test]
    fn refiring_after_resolve_waits_for_again() {
        let mut s = RuleState::default();
        s.step(0, vec![item("a")], T);
        s.step(10_000, vec![item("a")], T);
        assert_eq!(changes(&s.step(15_000, vec![], T)), [Change::Resolved]);
        assert!(s.step(20_000, vec![item("a")], T).is_empty());
        assert_eq!(
            changes(&s.step(30_000, vec![item("a")], T)),
            [Change::Firing]
        );
    }

    #[test]
    fn instances_are_independent() {
        let mut s = RuleState::default();
        s.step(0, vec![item("a")], T);
        s.step(5_000, vec![item("a"), item("b")], T);
        assert_eq!(
            changes(&s.step(10_000, vec![item("a"), item("b")], T)),
            [Change::Firing]
        );
        let t = s.step(15_000, vec![item("a"), item("b")], T);
        assert_eq!(changes(&t), [Change::Firing]);
        assert_eq!(t[0].instance.labels["item"], "b");
    }

    #[test]
    fn restored_state_does_not_renotify() {
        let mut s = RuleState::default();
        s.step(0, vec![item("a")], T);
        s.step(10_000, vec![item("a")], T);
        let stored = serde_json::to_string(&s).unwrap();
        let mut restored: RuleState = serde_json::from_str(&stored).unwrap();
        assert!(restored.step(20_000, vec![item("a")], T).is_empty());
        assert_eq!(
            changes(&restored.step(70_000, vec![item("a")], T)),
            [Change::Repeat]
        );
    }

    #[test]
    fn removing_the_rule_resolves_what_fired() {
        let mut s = RuleState::default();
        s.step(0, vec![item("a")], Timing { for_ms: 0, ..T });
        assert_eq!(changes(&s.resolve_all()), [Change::Resolved]);
    }
}
