//! Label matchers and silences with Alertmanager's semantics: `name=value`, `name!=value`,
//! `name=~regex`, `name!~regex`; a regex is anchored at both ends; a label an alert lacks is the
//! empty string. A silence is active from `starts_at` until `ends_at` and silences an alert
//! instance when every one of its matchers matches the instance's labels.
//!
//! Pure: the evaluator, the dashboard's API and `runner silence` share it; storing is the store's.

use super::config::AlertConfig;
use super::notification::labels_of;
use super::state::{Change, Instance, RuleState, Status, Timing, Transition};
use crate::store::{Labels, Matcher, Silence};
use chrono::{DateTime, Utc};
use regex::Regex;

/// Where a silence is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SilenceState {
    Pending,
    Active,
    Expired,
}

/// How long an expired silence is still listed (Alertmanager's default data retention).
pub const KEEP_EXPIRED: chrono::Duration = chrono::Duration::days(5);

/// The largest compiled regex a matcher may have: matchers come from API callers.
const REGEX_BYTES: usize = 1 << 20;

/// A matcher ready to test labels with.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub matcher: Matcher,
    regex: Option<Regex>,
}

impl Compiled {
    pub fn new(matcher: Matcher) -> Result<Compiled, String> {
        if matcher.name.is_empty() {
            return Err("a matcher needs a label name".into());
        }
        let regex = match matcher.is_regex {
            true => Some(
                regex::RegexBuilder::new(&format!("^(?:{})$", matcher.value))
                    .size_limit(REGEX_BYTES)
                    .build()
                    .map_err(|e| format!("{}: not a regular expression: {e}", show(&matcher)))?,
            ),
            false => None,
        };
        Ok(Compiled { matcher, regex })
    }

    /// Whether `labels` satisfy this matcher (a missing label is the empty string).
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.matcher.name).map_or("", String::as_str);
        let hit = match &self.regex {
            Some(r) => r.is_match(value),
            None => value == self.matcher.value,
        };
        hit == self.matcher.is_equal
    }
}

/// A matcher written as Alertmanager and amtool write it: `name=value`, `name!=value`,
/// `name=~regex`, `name!~regex`, with spaces around the operator allowed and the value
/// optionally in double quotes (`severity = "page"`).
pub fn parse_matcher(text: &str) -> Result<Matcher, String> {
    let at = text.find(['=', '!']).ok_or_else(|| {
        format!(
            "{text:?} is not a matcher: write name=value, name!=value, name=~regex or name!~regex"
        )
    })?;
    let name = text[..at].trim();
    let rest = &text[at..];
    let (op, value) = ["=~", "!~", "!=", "="]
        .iter()
        .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v)))
        .ok_or_else(|| {
            format!("{text:?} is not a matcher: the operator is one of =, !=, =~, !~")
        })?;
    let value = value.trim();
    let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(quoted) => serde_json::from_str::<String>(&format!("\"{quoted}\""))
            .map_err(|e| format!("{text:?}: the quoted value is not a string: {e}"))?,
        None => value.to_string(),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    {
        return Err(format!(
            "{text:?}: the label name must be letters, digits, '_' or '.'"
        ));
    }
    let matcher = Matcher {
        name: name.to_string(),
        value,
        is_regex: op.ends_with('~'),
        is_equal: op.starts_with('='),
    };
    Compiled::new(matcher.clone())?;
    Ok(matcher)
}

/// A matcher written back as [`parse_matcher`] reads it.
pub fn show(m: &Matcher) -> String {
    let op = match (m.is_equal, m.is_regex) {
        (true, false) => "=",
        (false, false) => "!=",
        (true, true) => "=~",
        (false, true) => "!~",
    };
    format!(
        "{}{op}{}",
        m.name,
        serde_json::to_string(&m.value).unwrap_or_default()
    )
}

/// Checks a silence about to be stored: matchers that compile, at least one of which does not
/// match the empty label set (a silence of everything is refused, as Alertmanager refuses it),
/// an end after its start, and who and why.
pub fn check(s: &Silence) -> Result<(), String> {
    if s.matchers.is_empty() {
        return Err("a silence needs at least one matcher".into());
    }
    let compiled = s
        .matchers
        .iter()
        .cloned()
        .map(Compiled::new)
        .collect::<Result<Vec<_>, _>>()?;
    if compiled.iter().all(|m| m.matches(&Labels::new())) {
        return Err("the matchers would silence every alert: at least one must need a label value (alertname=\"...\", say)".into());
    }
    if s.ends_at <= s.starts_at {
        return Err("ends_at must be after starts_at".into());
    }
    if s.comment.trim().is_empty() {
        return Err("a silence needs a comment saying why".into());
    }
    if s.created_by.trim().is_empty() {
        return Err("a silence needs created_by".into());
    }
    Ok(())
}

pub fn state(s: &Silence, now: DateTime<Utc>) -> SilenceState {
    if now < s.starts_at {
        SilenceState::Pending
    } else if now < s.ends_at {
        SilenceState::Active
    } else {
        SilenceState::Expired
    }
}

/// The silences in force at one time, compiled once per evaluation.
#[derive(Debug, Default)]
pub struct Silences {
    active: Vec<(String, Vec<Compiled>)>,
}

impl Silences {
    /// The silences of `all` active at `now`; one whose matchers no longer compile is left out
    /// (and named in the error list).
    pub fn active_at(all: &[Silence], now: DateTime<Utc>) -> (Silences, Vec<String>) {
        let mut active = Vec::new();
        let mut broken = Vec::new();
        for s in all.iter().filter(|s| state(s, now) == SilenceState::Active) {
            match s.matchers.iter().cloned().map(Compiled::new).collect() {
                Ok(c) => active.push((s.id.clone(), c)),
                Err(e) => broken.push(format!("silence {}: {e}", s.id)),
            }
        }
        (Silences { active }, broken)
    }

    /// The id of the first active silence whose matchers all match `labels`.
    pub fn silencing(&self, labels: &Labels) -> Option<&str> {
        self.active
            .iter()
            .find(|(_, ms)| ms.iter().all(|m| m.matches(labels)))
            .map(|(id, _)| id.as_str())
    }
}

/// [`RuleState::step`] under `silences`: each instance's `silenced_by` is set to the silence its
/// labels match now, and each transition comes with the silence that keeps it from being sent
/// (a resolution of an instance silenced while it fired is silenced too). An instance still
/// firing as its silence ends is notified then (unless it was in this very step), as
/// Alertmanager notifies it. The evaluator and `runner test` both advance rules through this.
pub fn step(
    rule: &AlertConfig,
    state: &mut RuleState,
    now: i64,
    holding: Vec<(Labels, Option<f64>)>,
    timing: Timing,
    silences: &Silences,
) -> Vec<(Transition, Option<String>)> {
    let mut out: Vec<(Transition, Option<String>)> = state
        .step(now, holding, timing)
        .into_iter()
        .map(|t| {
            let now_by = silences
                .silencing(&labels_of(rule, &t.instance.labels))
                .map(String::from);
            let by = match t.change {
                Change::Resolved => t.instance.silenced_by.clone().or(now_by),
                _ => now_by,
            };
            // The first word after a silence ends is that it fires, repeat or not.
            let mut t = t;
            if t.change == Change::Repeat && t.instance.silenced_by.is_some() && by.is_none() {
                t.change = Change::Firing;
            }
            (t, by)
        })
        .collect();
    for i in state.instances.values_mut() {
        let by = silences
            .silencing(&labels_of(rule, &i.labels))
            .map(String::from);
        if i.silenced_by.is_some()
            && by.is_none()
            && i.status == Status::Firing
            && i.notified_at != Some(now)
        {
            i.notified_at = Some(now);
            let instance = Instance {
                silenced_by: None,
                ..i.clone()
            };
            out.push((
                Transition {
                    change: Change::Firing,
                    instance,
                },
                None,
            ));
        }
        i.silenced_by = by;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn silence(matchers: &[&str], starts: i64, ends: i64) -> Silence {
        Silence {
            id: "s".into(),
            matchers: matchers.iter().map(|m| parse_matcher(m).unwrap()).collect(),
            starts_at: DateTime::from_timestamp_millis(starts).unwrap(),
            ends_at: DateTime::from_timestamp_millis(ends).unwrap(),
            created_by: "ops".into(),
            comment: "planned".into(),
            updated_at: DateTime::from_timestamp_millis(starts).unwrap(),
            expired_by: None,
        }
    }

    #[test]
    fn matchers_have_alertmanagers_four_operators_and_anchored_regexes() {
        let l = labels(&[("alertname", "traffic_drop"), ("severity", "page")]);
        let m = |t: &str| {
            Compiled::new(parse_matcher(t).unwrap())
                .unwrap()
                .matches(&l)
        };
        assert!(m("alertname=traffic_drop"));
        assert!(m(r#"alertname = "traffic_drop""#));
        assert!(!m("alertname!=traffic_drop"));
        assert!(m("severity=~pa.e|critical"));
        assert!(!m("severity=~pa"), "anchored: a prefix is not a match");
        assert!(m("severity!~warn.*"));
        assert!(
            m("team=") && m("team!~.+"),
            "a missing label is the empty string"
        );
        assert!(!m("team=~.+"));
    }

    #[test]
    fn a_matcher_reads_back_as_it_is_shown() {
        for t in ["a=b", "a!=b c", "a=~\"x|\\\"y\"", "a!~.*"] {
            let m = parse_matcher(t).unwrap();
            assert_eq!(parse_matcher(&show(&m)).unwrap(), m, "{t}");
        }
        for bad in ["nothing", "=x", "a~b", "bad name=x", "a=~(unclosed"] {
            assert!(parse_matcher(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_silence_is_active_only_between_its_start_and_end() {
        let s = silence(&["alertname=a"], 1_000, 2_000);
        let at = |t| DateTime::from_timestamp_millis(t).unwrap();
        assert_eq!(state(&s, at(999)), SilenceState::Pending);
        assert_eq!(state(&s, at(1_000)), SilenceState::Active);
        assert_eq!(state(&s, at(2_000)), SilenceState::Expired);
        let l = labels(&[("alertname", "a")]);
        assert_eq!(
            Silences::active_at(std::slice::from_ref(&s), at(1_500))
                .0
                .silencing(&l),
            Some("s")
        );
        assert_eq!(Silences::active_at(&[s], at(2_000)).0.silencing(&l), None);
    }

    #[test]
    fn every_matcher_of_a_silence_must_match() {
        let s = silence(&["alertname=a", "item=~i-[0-9]+"], 0, 10);
        let (set, _) = Silences::active_at(&[s], DateTime::from_timestamp_millis(5).unwrap());
        assert!(set
            .silencing(&labels(&[("alertname", "a"), ("item", "i-7")]))
            .is_some());
        assert!(set
            .silencing(&labels(&[("alertname", "a"), ("item", "x")]))
            .is_none());
        assert!(set.silencing(&labels(&[("alertname", "a")])).is_none());
    }

    #[test]
    fn a_silenced_instance_is_sent_as_firing_when_its_silence_ends_repeat_due_or_not() {
        let rule: AlertConfig =
            toml::from_str("name = \"a\"\ncondition = \"true\"\nrepeat_interval = \"10s\"")
                .unwrap();
        let timing = Timing {
            for_ms: 0,
            repeat_ms: 10_000,
            keep_firing_ms: 0,
        };
        let holding = || vec![(Labels::new(), None)];
        let quiet = silence(&["alertname=a"], 0, 25_000);
        let at = |t| DateTime::from_timestamp_millis(t).unwrap();
        let mut state = RuleState::default();
        let mut sent = Vec::new();
        for t in (0..=40_000).step_by(5_000) {
            let (silences, _) = Silences::active_at(std::slice::from_ref(&quiet), at(t));
            for (tr, by) in step(&rule, &mut state, t, holding(), timing, &silences) {
                sent.push((t, tr.change, by.is_some()));
            }
        }
        assert_eq!(
            sent,
            [
                (0, Change::Firing, true),
                (10_000, Change::Repeat, true),
                (20_000, Change::Repeat, true),
                (25_000, Change::Firing, false),
                (35_000, Change::Repeat, false),
            ]
        );
        // Ending when a repeat is due: that repeat is the firing notification, sent once.
        let mut state = RuleState::default();
        let quiet = silence(&["alertname=a"], 0, 20_000);
        let mut sent = Vec::new();
        for t in (0..=20_000).step_by(5_000) {
            let (silences, _) = Silences::active_at(std::slice::from_ref(&quiet), at(t));
            for (tr, by) in step(&rule, &mut state, t, holding(), timing, &silences) {
                sent.push((t, tr.change, by.is_some()));
            }
        }
        assert_eq!(sent[2..], [(20_000, Change::Firing, false)]);
    }

    #[test]
    fn a_silence_of_everything_or_without_a_reason_is_refused() {
        assert!(check(&silence(&["alertname=a"], 0, 10)).is_ok());
        assert!(check(&silence(&["alertname=~.*"], 0, 10))
            .unwrap_err()
            .contains("every alert"));
        assert!(check(&silence(&[], 0, 10)).is_err());
        assert!(check(&silence(&["alertname=a"], 10, 10)).is_err());
        let mut s = silence(&["alertname=a"], 0, 10);
        s.comment = " ".into();
        assert!(check(&s).unwrap_err().contains("comment"));
    }
}
