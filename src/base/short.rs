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

#[cfg(test)]
mod tests {
    use super::short;

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
