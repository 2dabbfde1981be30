//! How the traffic changes over time: a rate profile (`[generator.profile]`: a daily curve,
//! steps and ramps, random bursts) and scenarios (`[[generator.scenario]]`: named incidents that
//! change the rate or the records for a while, like an item going viral or purchases stopping).
//!
//! The generator asks [`Traffic::at`] once per batch how things stand: the factor on
//! `[generator] rate`, and what to put in place of draws (`set`) or hold back (`drop`).

use super::plan::Override;
use crate::base::de;
use crate::event::{FieldType, Schema, Value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

const DAY_MS: f64 = 86_400_000.0;

/// `[generator.profile]`: the rate is `[generator] rate` times the product of what is set here.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// A daily curve: 24 factors, one per hour from 00:00 UTC, joined by straight lines.
    #[serde(default)]
    pub daily: Vec<f64>,
    /// How long the curve's day lasts on the wall clock; "10m" shows a day in ten minutes.
    #[serde(default = "one_day", deserialize_with = "de::duration")]
    pub day_length: Duration,
    /// Steps and ramps, timed from the generator's start: from `at` the factor is `factor`,
    /// reached over `ramp` (a straight line from the factor before; none = a step).
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// The steps start over with this period [default: the last step holds].
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub repeat: Option<Duration>,
    /// Random bursts: on average one every `every`, lasting `duration`, at `factor` times the rate.
    #[serde(default)]
    pub bursts: Option<BurstConfig>,
}

fn one_day() -> Duration {
    Duration::from_secs(86_400)
}
fn one() -> f64 {
    1.0
}

/// One step of `[generator.profile] steps`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// When the step starts, after the generator starts (or the steps' period starts again).
    #[serde(deserialize_with = "de::duration")]
    pub at: Duration,
    /// The rate's factor from then on.
    #[serde(deserialize_with = "de::number")]
    pub factor: f64,
    /// How long the change from the factor before takes (a straight line); `0s` is a step.
    #[serde(default, deserialize_with = "de::duration")]
    pub ramp: Duration,
}

/// `[generator.profile] bursts`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstConfig {
    /// How often a burst comes, on average (the gaps are random).
    #[serde(deserialize_with = "de::duration")]
    pub every: Duration,
    /// How long one lasts.
    #[serde(deserialize_with = "de::duration")]
    pub duration: Duration,
    /// The rate's factor during a burst.
    #[serde(deserialize_with = "de::number")]
    pub factor: f64,
}

/// `[[generator.scenario]]`: a named incident, run with `--scenario NAME` or `[generator] scenarios`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioConfig {
    /// What `--scenario NAME` and `[generator] scenarios` call it.
    pub name: String,
    /// Shown in the log when it runs.
    #[serde(default)]
    pub description: String,
    /// Its changes to the traffic, each for a while (`[[generator.scenario.change]]`).
    #[serde(default, rename = "change")]
    pub changes: Vec<ChangeConfig>,
    /// The changes start over with this period [default: they run once].
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub every: Option<Duration>,
    /// A rate profile that replaces `[generator.profile]` while the scenario runs (a demo's
    /// day in five minutes, say).
    #[serde(default)]
    pub profile: Option<ProfileConfig>,
}

/// One change of a scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeConfig {
    /// When it starts, after the generator starts (or the scenario's period starts again).
    #[serde(deserialize_with = "de::duration")]
    pub start: Duration,
    /// How long it lasts.
    #[serde(deserialize_with = "de::duration")]
    pub duration: Duration,
    /// Multiplies the rate meanwhile (0 stops the traffic).
    #[serde(default = "one", deserialize_with = "de::number")]
    pub rate: f64,
    /// Field values that take the place of the draw, e.g. `{ item_id = "item_42" }` ...
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    /// ... in this share of the records that draw the field.
    #[serde(default = "one", deserialize_with = "de::number")]
    pub share: f64,
    /// Records with one of these values are not sent, e.g. `{ interaction_type = ["purchase"] }`.
    #[serde(default)]
    pub drop: BTreeMap<String, Vec<toml::Value>>,
}

impl ProfileConfig {
    /// Problems a parse cannot catch.
    pub fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.daily.is_empty() || self.daily.len() == 24) {
            p.push(format!(
                "generator.profile.daily has {} factors; give 24, one per hour from 00:00 UTC",
                self.daily.len()
            ));
        }
        if self
            .daily
            .iter()
            .chain(self.steps.iter().map(|s| &s.factor))
            .any(|f| !f.is_finite() || *f < 0.0)
        {
            p.push("generator.profile: factors are finite and not negative".to_string());
        }
        if self.day_length.is_zero() {
            p.push("generator.profile.day_length must be more than 0s".to_string());
        }
        if self.steps.windows(2).any(|w| w[1].at < w[0].at) {
            p.push("generator.profile.steps: list them in order of `at`".to_string());
        }
        if self
            .repeat
            .is_some_and(|r| r.is_zero() || self.steps.last().is_some_and(|s| s.at >= r))
        {
            p.push("generator.profile.repeat must be longer than the last step's `at`".to_string());
        }
        if let Some(b) = &self.bursts {
            if b.every.is_zero()
                || b.duration.is_zero()
                || !(b.factor.is_finite() && b.factor >= 0.0)
            {
                p.push("generator.profile.bursts: every and duration above 0s, factor finite and not negative".to_string());
            }
        }
        p
    }
}

/// A compiled change: when, and what it does to the records.
#[derive(Debug, Clone)]
struct Change {
    scenario: String,
    start_ms: i64,
    end_ms: i64,
    every_ms: Option<i64>,
    rate: f64,
    overrides: Vec<Override>,
    drops: Vec<(usize, Vec<String>)>,
}

impl Change {
    fn active(&self, elapsed_ms: i64) -> bool {
        let t = match self.every_ms {
            Some(p) => elapsed_ms % p,
            None => elapsed_ms,
        };
        (self.start_ms..self.end_ms).contains(&t)
    }
}

/// What the active scenario changes do to the records of a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Values put in place of draws.
    pub overrides: Vec<Override>,
    /// Records with one of these values in the slot are held back.
    pub drops: Vec<(usize, Vec<String>)>,
}

impl Effects {
    /// Whether a record is held back.
    pub fn drops(&self, r: &crate::event::Record) -> bool {
        self.drops
            .iter()
            .any(|(slot, values)| values.iter().any(|v| r.get(*slot).matches(v)))
    }
}

/// How traffic stands at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Now {
    /// Multiplies `[generator] rate`.
    pub factor: f64,
    pub effects: Effects,
    /// The scenarios with a change on now.
    pub scenarios: Vec<String>,
}

impl Now {
    /// The rate to send at: `base` times the factor, or `None` while a positive `base` is
    /// brought to a stop (a scenario's rate 0, a profile at 0). A `base` of 0 stays unpaced.
    pub fn rate(&self, base: f64) -> Option<f64> {
        let rate = base * self.factor;
        (base <= 0.0 || rate >= 1e-3).then_some(rate)
    }
}

/// The profile and the enabled scenarios, compiled against the schema.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    profile: ProfileConfig,
    changes: Vec<Change>,
}

impl Traffic {
    /// Compiles the profile and every scenario (so a mistake in one not run yet is reported at
    /// load too), keeping those `enabled` names; errors name the scenario and field.
    pub fn compile(
        profile: Option<&ProfileConfig>,
        scenarios: &[ScenarioConfig],
        enabled: &[String],
        schema: &Schema,
    ) -> Result<Traffic, String> {
        if let Some(name) = enabled
            .iter()
            .find(|n| !scenarios.iter().any(|s| &s.name == *n))
        {
            let known: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "no scenario named {name:?} (the file has: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        let mut changes = Vec::new();
        let mut profile = profile.cloned().unwrap_or_default();
        for s in scenarios {
            if let Some(problem) = s.profile.iter().flat_map(ProfileConfig::check).next() {
                return Err(format!(
                    "scenario {:?}: {}",
                    s.name,
                    problem.replace("generator.profile", "profile")
                ));
            }
            let compiled = s
                .changes
                .iter()
                .map(|c| compile_change(s, c, schema))
                .collect::<Result<Vec<_>, _>>()?;
            if enabled.contains(&s.name) {
                changes.extend(compiled);
            }
        }
        // In the order named: a later scenario's profile wins.
        for name in enabled {
            if let Some(p) = scenarios
                .iter()
                .find(|s| &s.name == name)
                .and_then(|s| s.profile.as_ref())
            {
                profile = p.clone();
            }
        }
        Ok(Traffic { profile, changes })
    }

    /// The factor and effects `elapsed` after the generator started at wall time `started_ms`.
    pub fn at(&self, started_ms: i64, elapsed: Duration, bursts: &mut Bursts) -> Now {
        let e = elapsed.as_millis() as i64;
        let p = &self.profile;
        let mut factor = 1.0;
        if p.daily.len() == 24 {
            let day = p.day_length.as_millis() as f64;
            let phase = ((started_ms as f64 % DAY_MS) / DAY_MS + e as f64 / day).fract();
            let hour = phase * 24.0;
            let (h, frac) = (hour.floor() as usize % 24, hour.fract());
            factor *= p.daily[h] + (p.daily[(h + 1) % 24] - p.daily[h]) * frac;
        }
        if !p.steps.is_empty() {
            let t = match p.repeat {
                Some(r) => e % r.as_millis() as i64,
                None => e,
            };
            factor *= step_factor(&p.steps, t);
        }
        if let Some(b) = &p.bursts {
            if bursts.on(e, b) {
                factor *= b.factor;
            }
        }
        let mut effects = Effects::default();
        let mut scenarios = Vec::new();
        for c in self.changes.iter().filter(|c| c.active(e)) {
            factor *= c.rate;
            effects.overrides.extend(c.overrides.iter().cloned());
            effects.drops.extend(c.drops.iter().cloned());
            if !scenarios.contains(&c.scenario) {
                scenarios.push(c.scenario.clone());
            }
        }
        Now {
            factor,
            effects,
            scenarios,
        }
    }
}

/// The factor of a step list at `t` ms: before the first step, 1.
fn step_factor(steps: &[StepConfig], t: i64) -> f64 {
    let mut before = 1.0;
    for s in steps {
        let at = s.at.as_millis() as i64;
        if t < at {
            break;
        }
        let ramp = s.ramp.as_millis() as i64;
        if ramp > 0 && t < at + ramp {
            return before + (s.factor - before) * (t - at) as f64 / ramp as f64;
        }
        before = s.factor;
    }
    before
}

fn compile_change(s: &ScenarioConfig, c: &ChangeConfig, schema: &Schema) -> Result<Change, String> {
    let at = |what: &str| format!("scenario {:?}: {what}", s.name);
    if !(c.rate.is_finite() && c.rate >= 0.0) {
        return Err(at(&format!(
            "rate is a factor, finite and not negative, got {}",
            c.rate
        )));
    }
    if !(0.0..=1.0).contains(&c.share) {
        return Err(at(&format!("share is between 0 and 1, got {}", c.share)));
    }
    if c.duration.is_zero() {
        return Err(at("a change lasts more than 0s"));
    }
    let every_ms = s.every.map(|e| e.as_millis() as i64);
    if every_ms.is_some_and(|p| p < (c.start + c.duration).as_millis() as i64) {
        return Err(at(
            "every must be at least as long as each change's start plus duration",
        ));
    }
    let slot = |field: &str| {
        let slot = schema
            .slot(field)
            .ok_or_else(|| at(&format!("`{field}` is not declared in [event]")))?;
        if slot == schema.id_slot() || slot == schema.time_slot() {
            return Err(at(&format!(
                "`{field}` is the record's id or time, which the runner sets"
            )));
        }
        Ok(slot)
    };
    let mut overrides = Vec::new();
    for (field, v) in &c.set {
        let i = slot(field)?;
        let ty = schema.fields()[i].spec.ty;
        let value = match (v, ty) {
            (toml::Value::String(t), FieldType::String) => Value::Text(t.as_str().into()),
            (toml::Value::Integer(n), FieldType::Int) => Value::Int(*n),
            (toml::Value::Integer(n), FieldType::Float) => Value::Float(*n as f64),
            (toml::Value::Float(f), FieldType::Float) => Value::Float(*f),
            (toml::Value::Boolean(b), FieldType::Bool) => Value::Bool(*b),
            _ => {
                return Err(at(&format!(
                    "set.{field}: {v} does not fit the field's type ({})",
                    ty.name()
                )))
            }
        };
        overrides.push(Override {
            slot: i,
            value,
            share: c.share,
        });
    }
    let mut drops = Vec::new();
    for (field, values) in &c.drop {
        let texts = values.iter().map(|v| match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        drops.push((slot(field)?, texts.collect()));
    }
    let start_ms = c.start.as_millis() as i64;
    Ok(Change {
        scenario: s.name.clone(),
        start_ms,
        end_ms: start_ms + c.duration.as_millis() as i64,
        every_ms,
        rate: c.rate,
        overrides,
        drops,
    })
}

/// The random bursts' own state: when the next starts and when the current one ends.
pub struct Bursts {
    rng: SmallRng,
    next_ms: Option<i64>,
    until_ms: i64,
}

impl Bursts {
    pub fn new(seed: Option<u64>) -> Bursts {
        let rng = match seed {
            Some(s) => SmallRng::seed_from_u64(s ^ 0xb0_0057),
            None => SmallRng::from_os_rng(),
        };
        Bursts {
            rng,
            next_ms: None,
            until_ms: 0,
        }
    }

    /// Whether a burst is on at `e` ms; bursts start as a Poisson process of mean gap `every`.
    fn on(&mut self, e: i64, b: &BurstConfig) -> bool {
        let every = b.every.as_millis() as f64;
        let gap = |rng: &mut SmallRng| (-(1.0 - rng.random::<f64>()).ln() * every) as i64;
        let next = *self.next_ms.get_or_insert_with(|| e + gap(&mut self.rng));
        if e >= next {
            self.until_ms = next + b.duration.as_millis() as i64;
            self.next_ms = Some(self.until_ms + gap(&mut self.rng));
        }
        e < self.until_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(text: &str) -> ProfileConfig {
        toml::from_str(text).unwrap()
    }

    fn factor(t: &Traffic, started_ms: i64, secs: f64) -> f64 {
        t.at(
            started_ms,
            Duration::from_secs_f64(secs),
            &mut Bursts::new(Some(1)),
        )
        .factor
    }

    #[test]
    fn steps_hold_and_ramps_are_straight() {
        let p = profile("steps = [{ at = \"10s\", factor = 2.0 }, { at = \"20s\", factor = 4.0, ramp = \"10s\" }]");
        let t = Traffic::compile(Some(&p), &[], &[], &schema()).unwrap();
        assert_eq!(factor(&t, 0, 5.0), 1.0);
        assert_eq!(factor(&t, 0, 15.0), 2.0);
        assert_eq!(factor(&t, 0, 25.0), 3.0);
        assert_eq!(factor(&t, 0, 40.0), 4.0);
    }

    #[test]
    fn the_daily_curve_follows_the_hour_and_its_day_length() {
        let mut daily = vec![1.0; 24];
        daily[12] = 3.0;
        let p = ProfileConfig {
            daily,
            day_length: Duration::from_secs(240),
            ..Default::default()
        };
        let t = Traffic::compile(Some(&p), &[], &[], &schema()).unwrap();
        // Started at midnight; a day lasts 240 s, so an hour 10 s: noon at 120 s.
        assert_eq!(factor(&t, 0, 120.0), 3.0);
        assert_eq!(factor(&t, 0, 125.0), 2.0, "half way to 13:00");
        assert_eq!(factor(&t, 0, 60.0), 1.0);
    }

    fn schema() -> Schema {
        Schema::new(&toml::from_str("id = \"id\"\ntime = \"t\"\n[fields]\nid = \"string\"\nt = \"timestamp\"\nitem = \"string\"\nkind = \"string\"").unwrap()).unwrap()
    }

    #[test]
    fn scenario_changes_apply_only_while_on() {
        let s: ScenarioConfig = toml::from_str(
            "name = \"viral\"\n[[change]]\nstart = \"3m\"\nduration = \"2m\"\nset = { item = \"i42\" }\nshare = 0.3\nrate = 2.0\ndrop = { kind = [\"buy\"] }",
        )
        .unwrap();
        let t = Traffic::compile(
            None,
            std::slice::from_ref(&s),
            &["viral".to_string()],
            &schema(),
        )
        .unwrap();
        let mut b = Bursts::new(Some(1));
        let before = t.at(0, Duration::from_secs(170), &mut b);
        assert_eq!(
            (
                before.factor,
                before.effects.overrides.len(),
                before.scenarios.len()
            ),
            (1.0, 0, 0)
        );
        let on = t.at(0, Duration::from_secs(200), &mut b);
        assert_eq!(on.factor, 2.0);
        let slot = |f: &str| schema().slot(f).unwrap();
        assert_eq!(
            on.effects.overrides,
            vec![Override {
                slot: slot("item"),
                value: Value::Text("i42".into()),
                share: 0.3
            }]
        );
        assert_eq!(
            on.effects.drops,
            vec![(slot("kind"), vec!["buy".to_string()])]
        );
        assert_eq!(on.scenarios, ["viral"]);
        assert_eq!(
            t.at(0, Duration::from_secs(300), &mut b).factor,
            1.0,
            "over at 5m"
        );
        let unknown = Traffic::compile(
            None,
            std::slice::from_ref(&s),
            &["nope".to_string()],
            &schema(),
        )
        .unwrap_err();
        assert!(
            unknown.contains("no scenario named \"nope\"") && unknown.contains("viral"),
            "{unknown}"
        );
        let mut broken = s;
        broken.changes[0]
            .set
            .insert("colour".into(), toml::Value::String("red".into()));
        let err = Traffic::compile(None, &[broken], &[], &schema()).unwrap_err();
        assert!(
            err.contains("scenario \"viral\": `colour` is not declared"),
            "a scenario not run is checked too: {err}"
        );
    }

    #[test]
    fn bursts_come_and_go() {
        let b = BurstConfig {
            every: Duration::from_secs(60),
            duration: Duration::from_secs(10),
            factor: 3.0,
        };
        let mut bursts = Bursts::new(Some(3));
        let on = (0..36_000).filter(|s| bursts.on(s * 100, &b)).count() as f64 / 36_000.0;
        // A burst of 10 s about every 70 s (gap after its end): about 1/7 of the time.
        assert!((0.08..0.22).contains(&on), "{on}");
    }
}
