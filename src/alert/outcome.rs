//! What a rule is in one evaluation when its condition cannot say: every metric it reads has no
//! data, or the condition failed. Grafana's no-data and error states: by the rule's `no_data`
//! and `on_error`, such an evaluation is a state of its own (an instance labelled
//! `alert_state = "no_data"` or `"error"`, which goes pending, fires and resolves like any
//! other, so `for` applies), alerting, or ok. Without them a rule over an empty window or with a
//! typo in a threshold's name was silently false.
//!
//! Pure: the evaluator and `runner test`'s fixtures both call [`holding`].

use super::config::{AlertConfig, NoData, OnError};
use super::state::{Change, Labels, RuleState};

/// The label that marks an instance of a no-data or error state.
pub const STATE_LABEL: &str = "alert_state";

/// What one evaluation of a rule gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// The condition ran: the instances that hold.
    Holding(Vec<(Labels, Option<f64>)>),
    /// Every metric the rule reads has no data in its window; the condition did not run.
    NoData,
    /// The condition failed, and why.
    Error(String),
}

/// The instances that hold after `evaluation`, given the rule's state before it.
pub fn holding(
    config: &AlertConfig,
    evaluation: &Evaluation,
    before: &RuleState,
) -> Vec<(Labels, Option<f64>)> {
    let state = |name: &str| {
        vec![(
            Labels::from([(STATE_LABEL.to_string(), name.to_string())]),
            None,
        )]
    };
    // `alerting`: what held keeps holding (with its last value), or the rule as a whole.
    let alerting = || {
        let kept: Vec<(Labels, Option<f64>)> = before
            .instances
            .values()
            .filter(|i| !i.labels.contains_key(STATE_LABEL))
            .map(|i| (i.labels.clone(), i.value))
            .collect();
        match kept.is_empty() {
            true => vec![(Labels::new(), None)],
            false => kept,
        }
    };
    match evaluation {
        Evaluation::Holding(h) => h.clone(),
        Evaluation::NoData => match config.no_data {
            NoData::NoData => state("no_data"),
            NoData::Alerting => alerting(),
            NoData::Ok => Vec::new(),
        },
        Evaluation::Error(_) => match config.on_error {
            OnError::Error => state("error"),
            OnError::Alerting => alerting(),
            OnError::Ok => Vec::new(),
        },
    }
}

/// The state an instance's labels say it is in: `alerting`, `no_data` or `error`.
pub fn state_of(labels: &Labels) -> &str {
    labels
        .get(STATE_LABEL)
        .map(String::as_str)
        .unwrap_or("alerting")
}

/// The message of a notification of a no-data or error instance (the rule's own template is
/// written for its alerting instances), or `None` for an alerting one.
pub fn message(
    alert: &str,
    labels: &Labels,
    change: Change,
    error: Option<&str>,
) -> Option<String> {
    let resolved = change == Change::Resolved;
    Some(match (state_of(labels), resolved) {
        ("no_data", false) => {
            format!("{alert}: no data: no metric it reads has a record in its window")
        }
        ("no_data", true) => format!("{alert}: its metrics have data again"),
        ("error", false) => format!(
            "{alert} cannot be evaluated: {}",
            error.unwrap_or("its condition fails")
        ),
        ("error", true) => format!("{alert} evaluates again"),
        _ => return None,
    })
}

/// Whether a rule reading `reads` of the metrics has no data: it reads at least one, and none of
/// them has data (`has_data` of the metric's name).
pub fn no_data<'a>(
    reads: impl IntoIterator<Item = &'a str>,
    has_data: impl Fn(&str) -> bool,
) -> bool {
    let mut any = false;
    for m in reads {
        if has_data(m) {
            return false;
        }
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::state::{Instance, Status};

    fn rule(extra: &str) -> AlertConfig {
        toml::from_str(&format!("name = \"r\"\ncondition = \"true\"\n{extra}")).unwrap()
    }

    fn firing(item: &str) -> RuleState {
        let labels = Labels::from([("item".to_string(), item.to_string())]);
        RuleState {
            instances: [(
                crate::alert::state::key(&labels),
                Instance {
                    labels,
                    value: Some(5.0),
                    status: Status::Firing,
                    active_since: 0,
                    fired_at: Some(0),
                    notified_at: Some(0),
                    cleared_at: None,
                    silenced_by: None,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn no_data_and_errors_are_states_of_their_own_by_default() {
        let before = firing("i7");
        let no_data = holding(&rule(""), &Evaluation::NoData, &before);
        assert_eq!(state_of(&no_data[0].0), "no_data");
        let error = holding(&rule(""), &Evaluation::Error("x".into()), &before);
        assert_eq!(state_of(&error[0].0), "error");
        assert_eq!(
            no_data.len() + error.len(),
            2,
            "the item's instance no longer holds"
        );
    }

    #[test]
    fn alerting_keeps_what_held_and_ok_holds_nothing() {
        let before = firing("i7");
        let alerting = rule("no_data = \"alerting\"\non_error = \"alerting\"");
        let kept = holding(&alerting, &Evaluation::NoData, &before);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0["item"], "i7");
        assert_eq!(kept[0].1, Some(5.0));
        let whole = holding(
            &alerting,
            &Evaluation::Error("x".into()),
            &RuleState::default(),
        );
        assert_eq!(whole, vec![(Labels::new(), None)]);
        let ok = rule("no_data = \"ok\"\non_error = \"ok\"");
        assert!(holding(&ok, &Evaluation::NoData, &before).is_empty());
        assert!(holding(&ok, &Evaluation::Error("x".into()), &before).is_empty());
    }

    #[test]
    fn a_rule_has_no_data_only_when_every_metric_it_reads_has_none() {
        let has = |m: &str| m == "a";
        assert!(!no_data(["a", "b"], has));
        assert!(no_data(["b", "c"], has));
        assert!(!no_data([], has), "a rule reading no metric has data");
    }
}
