//! Deserializers shared by every component's config: durations as `"30s"`, and numbers that may
//! arrive as strings because an env var filled them in (`rate = "${DEFAULT_GENERATION_RATE:-100}"`).

use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

/// A number written either as a TOML number or as a string holding one.
pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Number,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T: Number> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number (or a string holding one)")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            T::from_i64(v).ok_or_else(|| E::custom(format!("{v} is out of range")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            let v = i64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))?;
            self.visit_i64(v)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            T::from_f64(v).ok_or_else(|| E::custom(format!("{v} is not a whole number")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.trim()
                .parse()
                .map_err(|e| E::custom(format!("{v:?} is not a valid number: {e}")))
        }
    }
    d.deserialize_any(V(PhantomData))
}

/// The numeric types config fields use.
pub trait Number: FromStr<Err: fmt::Display> + Sized {
    fn from_i64(v: i64) -> Option<Self>;
    fn from_f64(v: f64) -> Option<Self>;
}
impl Number for f64 {
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
}
macro_rules! integer_number {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_f64(v: f64) -> Option<Self> {
                (v.fract() == 0.0).then(|| <$t>::try_from(v as i64).ok()).flatten()
            }
        }
    )*};
}
integer_number!(u16, u32, u64, usize, i32, i64);

/// A duration written the human way: `"500ms"`, `"30s"`, `"5m"`, `"7d"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text: String = serde::Deserialize::deserialize(d)?;
    parse_duration(&text).map_err(de::Error::custom)
}

/// Like [`duration`], for optional fields; an empty string or `"off"` means none.
pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text: String = serde::Deserialize::deserialize(d)?;
    match text.trim() {
        "" | "off" | "none" => Ok(None),
        t => parse_duration(t).map(Some).map_err(de::Error::custom),
    }
}

/// Parses `"30s"`-style text, with an error that shows the accepted forms. A bare number is
/// seconds, as the original Python pipeline's environment variables write durations (`DASHBOARD_REFRESH_INTERVAL=5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("{text:?} is not a duration: seconds must be 0 or more"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write it like \"500ms\", \"30s\", \"5m\" or \"7d\" (a bare number is seconds)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration(" 2.5 "), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("-1").unwrap_err().contains("0 or more"));
        assert!(parse_duration("7 parsecs")
            .unwrap_err()
            .contains("a bare number is seconds"));
    }
}
