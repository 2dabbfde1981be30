//! How long each kind of stored row is kept. MongoDB expires rows with TTL indexes; the embedded
//! store deletes them in a periodic sweep and gives the freed pages back to the file system.

use crate::base::de;
use serde::Deserialize;
use std::time::Duration;

/// `[retention]`: how long each kind of row is kept; an unset kind is kept forever.
///
/// Rows expire by the time they are about: raw events by their event time, metric panes by their
/// pane start, alert notifications and dead letters by when they were raised, results by their
/// window end. A metric's
/// watermark records are never expired (they are not time-slotted data).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Raw events.
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub raw: Option<Duration>,
    /// Metric partial states (panes). Must cover the longest window plus its lateness and slide,
    /// so a window never loses a pane it still reads.
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub panes: Option<Duration>,
    /// The alert history (notifications sent).
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub alerts: Option<Duration>,
    /// Dead letters.
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub dead_letters: Option<Duration>,
    /// Final window results, by their window end.
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub results: Option<Duration>,
}

impl RetentionConfig {
    /// True when something expires.
    pub fn any(&self) -> bool {
        self.kinds().iter().any(Option::is_some)
    }

    fn kinds(&self) -> [Option<Duration>; 5] {
        [
            self.raw,
            self.panes,
            self.alerts,
            self.dead_letters,
            self.results,
        ]
    }

    /// Whether the pane retention keeps every pane a window still reads: `needed` is, per metric,
    /// its name and the span behind the newest event its panes must stay for (window + lateness
    /// + slide).
    pub fn check(&self, needed: &[(String, Duration)]) -> Option<String> {
        let keep = self.panes?;
        let (metric, span) = needed.iter().max_by_key(|(_, span)| *span)?;
        (keep < *span).then(|| {
            format!(
                "retention.panes = {} is shorter than what [[metric]] {metric:?} still reads ({}: its window, slide and \
                 lateness), so panes it needs would be deleted (keep panes at least that long)",
                humantime::format_duration(keep),
                humantime::format_duration(*span)
            )
        })
    }

    /// How often the embedded store sweeps: a tenth of the shortest retention, between 1 s and 1 h,
    /// so a row outlives its retention by at most about a tenth of it.
    pub fn sweep_every(&self) -> Option<Duration> {
        self.kinds().into_iter().flatten().min().map(|shortest| {
            (shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RetentionConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn each_kind_takes_a_duration_and_unset_keeps_forever() {
        let r = parse("raw = \"7d\"\npanes = \"2d\"\ndead_letters = \"off\"").unwrap();
        assert_eq!(r.raw, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(r.panes, Some(Duration::from_secs(2 * 86400)));
        assert_eq!((r.alerts, r.dead_letters), (None, None));
        assert!(
            parse("rows = \"1d\"").is_err(),
            "an unknown kind is an error"
        );
        assert!(!RetentionConfig::default().any());
    }

    #[test]
    fn panes_shorter_than_a_window_needs_are_refused_by_name() {
        let r = parse("panes = \"5m\"").unwrap();
        let needed = vec![
            ("short".to_string(), Duration::from_secs(60)),
            ("hourly".to_string(), Duration::from_secs(3605)),
        ];
        let problem = r.check(&needed).expect("5m cannot hold an hour's panes");
        assert!(problem.starts_with("retention.panes = 5m"), "{problem}");
        assert!(problem.contains("\"hourly\""), "{problem}");
        assert_eq!(parse("panes = \"2h\"").unwrap().check(&needed), None);
        assert_eq!(RetentionConfig::default().check(&needed), None);
    }

    #[test]
    fn the_sweep_runs_at_a_tenth_of_the_shortest_retention_within_bounds() {
        assert_eq!(
            parse("raw = \"7d\"\nalerts = \"100s\"")
                .unwrap()
                .sweep_every(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse("raw = \"2s\"").unwrap().sweep_every(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse("raw = \"30d\"").unwrap().sweep_every(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(RetentionConfig::default().sweep_every(), None);
    }
}
