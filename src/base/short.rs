//! Numbers as people read them on a dashboard tile or a terminal: 12.3k, 4.56M, 0.025.

/// A compact number for labels: `M` and `k` past ten thousand, whole numbers as they are, small
/// fractions to three decimals without trailing zeros.
pub fn short(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v };
    if !v.is_finite() {
        format!("{v}")
    } else if v.abs() >= 1e15 || v.abs() < 5e-4 && v != 0.0 {
        // Past a billion millions, or below what three decimals show: an exponent keeps the
        // label a few characters (1.7e308 would be 300 digits of `M`).
        format!("{v:.2e}")
    } else if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_string()
    }
}

/// A number for a table, where digits matter more than width: integers as they are, fractions
/// to six significant digits (at least two decimals, never float noise: `183260.93999999994`
/// reads `183260.94`), exponents past 1e15 and below 1e-4. JSON and stored values keep full
/// precision; only what people read is rounded.
pub fn readable(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v };
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    if v.abs() >= 1e15 || v.abs() < 1e-4 {
        return format!("{v:.4e}");
    }
    let whole_digits = if v.abs() >= 1.0 {
        v.abs().log10().floor() as i32 + 1
    } else {
        0
    };
    let leading_zeros = if v.abs() < 1.0 {
        -(v.abs().log10().ceil() as i32)
    } else {
        0
    };
    let decimals = (6 - whole_digits).max(2) + leading_zeros;
    let text = format!("{v:.*}", decimals as usize);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// A JSON value (a metric's) with every number in it [`readable`], as compact JSON-like text.
pub fn readable_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), readable),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(readable_json)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{k:?}: {}", readable_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{readable, readable_json, short};

    #[test]
    fn table_numbers_drop_float_noise_and_keep_the_digits_that_matter() {
        assert_eq!(readable(183260.93999999994), "183260.94");
        assert_eq!(readable(0.30000000000000004), "0.3");
        assert_eq!(readable(std::f64::consts::PI), "3.14159");
        assert_eq!(readable(0.000123456), "0.000123456");
        assert_eq!(readable(12.5), "12.5");
        assert_eq!(readable(957.0), "957");
        assert_eq!(readable(-0.0), "0");
        assert_eq!(readable(1.7976931348623157e308), "1.7977e308");
        assert_eq!(readable(f64::INFINITY), "inf");
        let v = serde_json::json!({"a": 0.1 + 0.2, "top": [{"key": "x", "count": 3}], "s": "t"});
        let shown = readable_json(&v);
        for part in [
            r#""a": 0.3"#,
            r#""count": 3"#,
            r#""key": "x""#,
            r#""s": "t""#,
        ] {
            assert!(shown.contains(part), "{part} in {shown}");
        }
    }

    #[test]
    fn numbers_are_short_and_keep_what_matters() {
        assert_eq!(short(12_345.0), "12.3k");
        assert_eq!(short(4_560_000.0), "4.56M");
        assert_eq!(short(957.0), "957");
        assert_eq!(short(53.14), "53.1");
        assert_eq!(short(0.025), "0.025");
        assert_eq!(short(-0.0), "0");
        assert_eq!(short(1.7e308), "1.70e308");
        assert_eq!(short(-2.5e-7), "-2.50e-7");
        assert_eq!(short(f64::NAN), "NaN");
    }
}
