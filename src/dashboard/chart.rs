//! Charts as SVG strings, drawn on the server so the page needs no chart library or CDN.

use std::fmt::Write;

/// A line chart of `(time ms, value)` points, with a hover title on every point.
pub fn line(points: &[(i64, f64)], width: u32, height: u32) -> String {
    let (w, h) = (width as f64, height as f64);
    let (pad_l, pad_r, pad_t, pad_b) = (48.0, 8.0, 8.0, 20.0);
    let mut svg = format!(r#"<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" xmlns="http://www.w3.org/2000/svg">"#);
    if points.is_empty() {
        let _ = write!(svg, r#"<text x="{}" y="{}" class="empty">no data yet</text></svg>"#, w / 2.0 - 30.0, h / 2.0);
        return svg;
    }
    let (t0, t1) = (points[0].0 as f64, points[points.len() - 1].0 as f64);
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).min(0.0);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max).max(lo + 1e-9);
    let x = |t: f64| pad_l + if t1 > t0 { (t - t0) / (t1 - t0) } else { 0.5 } * (w - pad_l - pad_r);
    let y = |v: f64| pad_t + (1.0 - (v - lo) / (hi - lo)) * (h - pad_t - pad_b);
    let _ = write!(svg, r#"<line class="axis" x1="{pad_l}" y1="{}" x2="{}" y2="{}"/>"#, h - pad_b, w - pad_r, h - pad_b);
    let _ = write!(svg, r#"<text class="tick" x="2" y="{}">{}</text>"#, pad_t + 10.0, short(hi));
    let _ = write!(svg, r#"<text class="tick" x="2" y="{}">{}</text>"#, h - pad_b, short(lo));
    let path: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t as f64), y(*v))).collect();
    let _ = write!(svg, r#"<polyline class="series" fill="none" points="{}"/>"#, path.join(" "));
    for (t, v) in points {
        let when = chrono::DateTime::from_timestamp_millis(*t).map(|d| d.format("%H:%M:%S").to_string()).unwrap_or_default();
        let _ = write!(svg, r#"<circle class="pt" cx="{:.1}" cy="{:.1}" r="3"><title>{when} UTC: {}</title></circle>"#, x(*t as f64), y(*v), short(*v));
    }
    svg.push_str("</svg>");
    svg
}

/// A compact number for labels.
pub fn short(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_point_with_a_title_each() {
        let svg = line(&[(0, 1.0), (5000, 3.0), (10000, 2.0)], 300, 100);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("<title>00:00:05 UTC: 3</title>"));
        assert!(line(&[], 300, 100).contains("no data yet"));
    }
}
