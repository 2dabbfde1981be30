//! Charts as SVG strings, drawn on the server so the page needs no chart library or CDN: a time
//! axis with labelled ticks and a grid, a y axis with round ticks and the unit, one line per
//! series with a legend, gaps where there is no data (never a fake zero), and hover columns
//! listing every series' value at that time. Colours come from the stylesheet (light and dark).

pub use crate::base::short;
use std::fmt::Write;

/// One line of a chart: `None` is a window with no data.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(i64, Option<f64>)>,
}

/// What a chart shows besides its series.
pub struct Frame<'a> {
    /// The time range, ms since the epoch; the axis spans it even where no data is yet.
    pub from: i64,
    pub to: i64,
    pub unit: &'a str,
    /// Series left out of the legend (a grouped metric shows its top keys).
    pub hidden: usize,
    /// The names of two series to shade between (a quantile metric's lowest and highest
    /// quantile: the p50 line within its p50–p99 area).
    pub band: Option<(&'a str, &'a str)>,
}

/// Points per series a chart draws at most: about one per pixel of its width.
pub const MAX_POINTS: usize = 500;
/// Hover columns at most (each lists the values at one time).
const HOVER_COLUMNS: usize = 96;
/// Colour classes in the stylesheet (`s0` … `s5`).
const PALETTE: usize = 6;

const W: f64 = 480.0;
const H: f64 = 150.0;
const PAD_L: f64 = 44.0;
const PAD_R: f64 = 8.0;
const PAD_T: f64 = 20.0;
const PAD_B: f64 = 20.0;

/// A multi-series line chart followed by its legend.
pub fn lines(series: &[Series], frame: &Frame) -> String {
    // Only finite values set the range; a non-finite one is drawn as a gap (see `runs`).
    let values = series.iter().flat_map(|s| {
        s.points
            .iter()
            .filter_map(|p| p.1.filter(|v| v.is_finite()))
    });
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {H}" width="100%" role="img" data-series="{}" xmlns="http://www.w3.org/2000/svg">"#,
        series.len()
    );
    let (t0, t1) = (
        frame.from as f64,
        (frame.to.max(frame.from.saturating_add(1))) as f64,
    );
    let x = |t: f64| PAD_L + (t - t0) / (t1 - t0) * (W - PAD_L - PAD_R);
    // Time axis first: it is drawn even before any data, so the empty chart shows the range.
    for t in time_ticks(frame.from, frame.to) {
        let px = x(t as f64);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{px:.1}" y1="{PAD_T}" x2="{px:.1}" y2="{}"/>"#,
            H - PAD_B
        );
        let _ = write!(
            svg,
            r#"<text class="tick x" x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - 5.0,
            clock(t, frame.to.saturating_sub(frame.from))
        );
    }
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{PAD_L}" y1="{}" x2="{}" y2="{}"/>"#,
        H - PAD_B,
        W - PAD_R,
        H - PAD_B
    );
    if !lo.is_finite() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="empty">no data in this range yet</text></svg>"#,
            W / 2.0 - 60.0,
            H / 2.0
        );
        return svg;
    }
    let axis = y_axis(lo, hi);
    let y = |v: f64| axis.y(v);
    for v in &axis.ticks {
        let py = y(*v);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{PAD_L}" y1="{py:.1}" x2="{}" y2="{py:.1}"/>"#,
            W - PAD_R
        );
        let _ = write!(
            svg,
            r#"<text class="tick y" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            PAD_L - 4.0,
            py + 3.0,
            short(*v)
        );
    }
    if !frame.unit.is_empty() {
        let _ = write!(
            svg,
            r#"<text class="unit" x="2" y="10">{}</text>"#,
            escape(frame.unit)
        );
    }
    if let Some(band) = frame.band {
        area(&mut svg, series, band, &x, &y);
    }
    for (i, s) in series.iter().enumerate() {
        let mut d = String::new();
        for run in runs(&reduce(&s.points, MAX_POINTS)) {
            for (j, (t, v)) in run.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if j == 0 { 'M' } else { 'L' },
                    x(*t as f64),
                    y(*v)
                );
            }
            // A window alone between gaps would be an invisible path of one point.
            if let [(t, v)] = run[..] {
                let _ = write!(
                    svg,
                    r#"<circle class="dot s{}" cx="{:.1}" cy="{:.1}" r="2"/>"#,
                    i % PALETTE,
                    x(t as f64),
                    y(v)
                );
            }
        }
        let _ = write!(
            svg,
            r#"<path class="series s{}" fill="none" d="{d}"><title>{}</title></path>"#,
            i % PALETTE,
            escape(&s.name)
        );
    }
    hover_columns(&mut svg, series, frame.unit, &x);
    svg.push_str("</svg>");
    legend(&mut svg, series, frame.hidden);
    svg
}

/// The shaded area between the series named `low` and `high`, one polygon per run of windows
/// where both have a value (a gap in either is a gap in the area).
fn area(
    svg: &mut String,
    series: &[Series],
    (low, high): (&str, &str),
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
) {
    let find = |name: &str| series.iter().find(|s| s.name == name);
    let (Some(lo), Some(hi)) = (find(low), find(high)) else {
        return;
    };
    let step = lo.points.len().div_ceil(MAX_POINTS).max(1);
    let both: Vec<(i64, Option<f64>, Option<f64>)> = lo
        .points
        .iter()
        .zip(&hi.points)
        .step_by(step)
        .map(|(a, b)| {
            let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
            (a.0, finite(a.1), finite(b.1))
        })
        .collect();
    for run in both.split(|p| p.1.is_none() || p.2.is_none()) {
        if run.len() < 2 {
            continue;
        }
        let upper = run.iter().map(|(t, _, h)| (*t, h.unwrap_or_default()));
        let lower = run
            .iter()
            .rev()
            .map(|(t, l, _)| (*t, l.unwrap_or_default()));
        let points: Vec<String> = upper
            .chain(lower)
            .map(|(t, v)| format!("{:.1},{:.1}", x(t as f64), y(v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polygon class="band" points="{}"><title>{} to {}</title></polygon>"#,
            points.join(" "),
            escape(low),
            escape(high)
        );
    }
}

/// Transparent columns whose tooltip lists every series at one time.
fn hover_columns(svg: &mut String, series: &[Series], unit: &str, x: &dyn Fn(f64) -> f64) {
    let times: Vec<i64> = series
        .first()
        .map(|s| s.points.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    if times.is_empty() {
        return;
    }
    let every = times.len().div_ceil(HOVER_COLUMNS);
    let idx: Vec<usize> = (0..times.len())
        .rev()
        .step_by(every)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    for (n, &i) in idx.iter().enumerate() {
        let left = if n == 0 {
            PAD_L
        } else {
            (x(times[idx[n - 1]] as f64) + x(times[i] as f64)) / 2.0
        };
        let right = match idx.get(n + 1) {
            Some(&next) => (x(times[i] as f64) + x(times[next] as f64)) / 2.0,
            None => W - PAD_R,
        };
        let mut title = format!("{} UTC", clock(times[i], 0));
        for s in series {
            let v = s
                .points
                .get(i)
                .and_then(|p| p.1)
                .filter(|v| v.is_finite())
                .map(|v| format!("{} {}", short(v), unit))
                .unwrap_or_else(|| "no data".into());
            let _ = write!(title, "\n{}: {}", escape(&s.name), v.trim_end());
        }
        let _ = write!(
            svg,
            r#"<rect class="hover" x="{left:.1}" y="{PAD_T}" width="{:.1}" height="{}"><title>{title}</title></rect>"#,
            (right - left).max(0.5),
            H - PAD_T - PAD_B
        );
    }
}

fn legend(out: &mut String, series: &[Series], hidden: usize) {
    if series.len() < 2 && hidden == 0 {
        return;
    }
    out.push_str(r#"<ul class="legend">"#);
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            r#"<li><i class="swatch s{}"></i>{}</li>"#,
            i % PALETTE,
            escape(&s.name)
        );
    }
    if hidden > 0 {
        let _ = write!(out, r#"<li class="more">+{hidden} more</li>"#);
    }
    out.push_str("</ul>");
}

/// The stretches of a series between gaps.
fn runs(points: &[(i64, Option<f64>)]) -> Vec<Vec<(i64, f64)>> {
    let mut out: Vec<Vec<(i64, f64)>> = Vec::new();
    let mut open = false;
    for (t, v) in points {
        match (v.filter(|v| v.is_finite()), open) {
            (Some(v), true) => out.last_mut().unwrap().push((*t, v)),
            (Some(v), false) => {
                out.push(vec![(*t, v)]);
                open = true;
            }
            (None, _) => open = false,
        }
    }
    out
}

/// About `n` of a series' points: each stretch between gaps reduced by [`lttb`] to its share of
/// `n` (at least its ends), and one `None` kept per gap, so the gaps stay where they were.
pub fn reduce(points: &[(i64, Option<f64>)], n: usize) -> Vec<(i64, Option<f64>)> {
    if points.len() <= n {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(n + 8);
    let mut i = 0;
    while i < points.len() {
        let start = i;
        let gap = points[i].1.is_none();
        while i < points.len() && points[i].1.is_none() == gap {
            i += 1;
        }
        if gap {
            out.push(points[start]);
            continue;
        }
        let run: Vec<(i64, f64)> = points[start..i]
            .iter()
            .map(|(t, v)| (*t, v.unwrap_or_default()))
            .collect();
        let share = (n * run.len()).div_ceil(points.len()).max(2);
        out.extend(lttb(&run, share).into_iter().map(|(t, v)| (t, Some(v))));
    }
    out
}

/// Largest-triangle-three-buckets: at most `n` of `points`, keeping the first and last and, per
/// bucket, the point that spans the largest triangle with its neighbours, so peaks survive the
/// reduction (an every-k-th sample drops them).
pub fn lttb(points: &[(i64, f64)], n: usize) -> Vec<(i64, f64)> {
    lttb_indices(points, n)
        .into_iter()
        .map(|i| points[i])
        .collect()
}

/// The indices [`lttb`] keeps.
fn lttb_indices(points: &[(i64, f64)], n: usize) -> Vec<usize> {
    let len = points.len();
    if n >= len || n < 3 {
        return (0..len).collect();
    }
    let bucket = (len - 2) as f64 / (n - 2) as f64;
    let mut keep = Vec::with_capacity(n);
    keep.push(0);
    let mut a = 0;
    for b in 0..n - 2 {
        let start = (b as f64 * bucket) as usize + 1;
        let end = (((b + 1) as f64 * bucket) as usize + 1).min(len - 1);
        let (next_start, next_end) = (end, ((((b + 2) as f64) * bucket) as usize + 1).min(len));
        let next = &points[next_start..next_end.max(next_start + 1)];
        let avg_t = next.iter().map(|p| p.0 as f64).sum::<f64>() / next.len() as f64;
        let avg_v = next.iter().map(|p| p.1).sum::<f64>() / next.len() as f64;
        let (at, av) = (points[a].0 as f64, points[a].1);
        let best = (start..end.max(start + 1))
            .max_by(|&i, &j| {
                let area = |k: usize| {
                    ((at - avg_t) * (points[k].1 - av) - (at - points[k].0 as f64) * (avg_v - av))
                        .abs()
                };
                area(i).total_cmp(&area(j))
            })
            .unwrap_or(start);
        keep.push(best);
        a = best;
    }
    keep.push(len - 1);
    keep
}

/// Most y ticks an axis draws; every tick is `low + i * step` for `i` below this, so no value
/// range (floats equal up to rounding, 1e308, 1e-300) can make the tick loop run on.
const MAX_Y_TICKS: usize = 12;
/// Most time ticks an axis draws, whatever its span.
const MAX_TIME_TICKS: i64 = 8;

/// A y axis: its range, the ticks drawn on it, and the mapping of a value to a pixel row.
#[derive(Debug, Clone, PartialEq)]
struct YAxis {
    low: f64,
    high: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    /// The pixel row of `v`. Halves are subtracted so a range of ±1.7e308 does not overflow to
    /// infinity; a flat axis (`low == high`) draws every value on its middle line.
    fn y(&self, v: f64) -> f64 {
        let span = self.high * 0.5 - self.low * 0.5;
        let share = if span > 0.0 {
            ((v * 0.5 - self.low * 0.5) / span).clamp(0.0, 1.0)
        } else {
            0.5
        };
        PAD_T + (1.0 - share) * (H - PAD_T - PAD_B)
    }
}

/// The y axis for finite values in `lo..=hi`: round ticks covering them, with zero on the axis
/// when the values are not far from it (so a count is not drawn as a cliff from its minimum).
/// Values that differ only by float rounding (an average of 0.1s: 0.1 and 0.10000000000000002)
/// get a flat axis with one tick: a step that small would not move a float at all.
fn y_axis(lo: f64, hi: f64) -> YAxis {
    let (lo, hi) = (lo.min(hi), hi.max(lo));
    let magnitude = lo.abs().max(hi.abs());
    if hi - lo <= magnitude * 1e-9 {
        return YAxis {
            low: lo,
            high: lo,
            ticks: vec![lo],
        };
    }
    let (low, high, step) = y_range(lo, hi);
    if !step.is_normal() || !low.is_finite() || !high.is_finite() {
        // A span near the smallest floats (subnormal values): too fine to divide into ticks.
        return YAxis {
            low: lo,
            high: lo,
            ticks: vec![lo],
        };
    }
    // In halves, as in `y_range`: `i * step` of an axis spanning ±1.7e308 overflows.
    let (half_low, half_step) = (low * 0.5, step * 0.5);
    let n = (((high * 0.5 - half_low) / half_step).round() as usize).min(MAX_Y_TICKS - 1);
    let ticks = (0..=n)
        .map(|i| ((half_low + i as f64 * half_step) * 2.0).clamp(f64::MIN, f64::MAX))
        .collect();
    YAxis { low, high, ticks }
}

/// Round y ticks covering `lo..hi` (finite, `lo < hi`): (axis low, axis high, tick step).
fn y_range(lo: f64, hi: f64) -> (f64, f64, f64) {
    let lo = if lo >= 0.0 && lo <= hi * 0.5 { 0.0 } else { lo };
    // Halves first: `hi - lo` of two values near ±f64::MAX is infinite, its half is not.
    let raw = (hi * 0.5 - lo * 0.5) / 2.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
        .min(f64::MAX);
    let low = ((lo / step).floor() * step).max(f64::MIN);
    let mut high = ((hi / step).ceil() * step).min(f64::MAX);
    if high <= low {
        high = (low + step).min(f64::MAX);
    }
    (low, high, step)
}

/// Tick times for the axis of `from..to`: multiples of a round step, at most
/// [`MAX_TIME_TICKS`] of them, whatever the span (seconds or centuries).
fn time_ticks(from: i64, to: i64) -> Vec<i64> {
    const STEPS: [i64; 17] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    ];
    const DAY: i64 = 86_400_000;
    let span = to.saturating_sub(from).max(1);
    let step = match STEPS.iter().map(|s| s * 1000).find(|s| span / s <= 6) {
        Some(step) => step,
        // Whole days past half a day a tick, as many as keep about six ticks.
        None => DAY.saturating_mul((span / DAY / 6).max(1)),
    };
    let Some(first) = from
        .div_euclid(step)
        .checked_add(1)
        .and_then(|k| k.checked_mul(step))
        .map(|t| if from.rem_euclid(step) == 0 { from } else { t })
    else {
        return Vec::new();
    };
    (0..MAX_TIME_TICKS)
        .map_while(|k| first.checked_add(k.checked_mul(step)?))
        .take_while(|t| *t <= to)
        .collect()
}

/// A tick label: seconds only where the axis spans minutes.
fn clock(t: i64, span: i64) -> String {
    let format = if span > 30 * 60_000 {
        "%H:%M"
    } else {
        "%H:%M:%S"
    };
    chrono::DateTime::from_timestamp_millis(t)
        .map(|d| d.format(format).to_string())
        .unwrap_or_default()
}

/// Text for SVG and HTML (series names are data: item ids, group keys), escaped as the
/// templates escape it.
fn escape(s: &str) -> String {
    minijinja::HtmlEscape(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame<'static> {
        Frame {
            from: 0,
            to: 60_000,
            unit: "events",
            hidden: 0,
            band: None,
        }
    }

    #[test]
    fn a_band_shades_between_two_series_and_breaks_at_a_gap() {
        let p50 = Series {
            name: "p50".into(),
            points: vec![
                (0, Some(1.0)),
                (5_000, Some(2.0)),
                (10_000, None),
                (15_000, Some(2.0)),
                (20_000, Some(1.0)),
            ],
        };
        let p99 = Series {
            name: "p99".into(),
            points: vec![
                (0, Some(5.0)),
                (5_000, Some(6.0)),
                (10_000, Some(6.0)),
                (15_000, Some(7.0)),
                (20_000, Some(5.0)),
            ],
        };
        let svg = lines(
            &[p99.clone(), p50.clone()],
            &Frame {
                band: Some(("p50", "p99")),
                ..frame()
            },
        );
        assert_eq!(svg.matches(r#"<polygon class="band""#).count(), 2, "{svg}");
        assert!(svg.contains("<title>p50 to p99</title>"));
        assert_eq!(
            svg.matches(r#"<path class="series"#).count(),
            2,
            "both lines stay"
        );
        let plain = lines(&[p99, p50], &frame());
        assert!(!plain.contains("polygon"));
    }

    #[test]
    fn the_time_axis_has_labelled_ticks_and_a_grid() {
        let s = Series {
            name: "n".into(),
            points: vec![(10_000, Some(1.0)), (20_000, Some(3.0))],
        };
        let svg = lines(&[s], &frame());
        // 0 s … 60 s at a 10 s step: 7 ticks labelled with the time of day (UTC).
        assert_eq!(svg.matches(r#"class="tick x""#).count(), 7);
        assert!(svg.contains(">00:00:30</text>"));
        assert!(svg.contains(r#"class="grid""#));
        assert!(svg.contains(r#"<text class="unit" x="2" y="10">events</text>"#));
    }

    #[test]
    fn a_window_without_data_is_a_gap_not_a_zero() {
        let s = Series {
            name: "n".into(),
            points: vec![
                (10_000, Some(5.0)),
                (15_000, Some(6.0)),
                (20_000, None),
                (25_000, Some(7.0)),
                (30_000, Some(8.0)),
            ],
        };
        let svg = lines(&[s], &frame());
        let d = svg
            .split(r#"d=""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(d.matches('M').count(), 2, "the line breaks at the gap: {d}");
        assert!(svg.contains("no data"), "the hover says so");
    }

    #[test]
    fn several_series_get_a_legend_with_escaped_names() {
        let a = Series {
            name: "view".into(),
            points: vec![(0, Some(1.0)), (5_000, Some(2.0))],
        };
        let b = Series {
            name: "<b>".into(),
            points: vec![(0, Some(3.0)), (5_000, None)],
        };
        let svg = lines(
            &[a, b],
            &Frame {
                hidden: 3,
                ..frame()
            },
        );
        assert_eq!(svg.matches(r#"<path class="series"#).count(), 2);
        assert!(
            svg.contains(r#"<ul class="legend">"#)
                && svg.contains("&lt;b&gt;")
                && !svg.contains("<b>")
        );
        assert!(svg.contains("+3 more"));
    }

    #[test]
    fn an_empty_chart_still_shows_its_time_axis() {
        let svg = lines(&[], &frame());
        assert!(svg.contains("no data in this range yet") && svg.contains(r#"class="tick x""#));
    }

    #[test]
    fn lttb_keeps_the_ends_and_the_peak() {
        let mut points: Vec<(i64, f64)> = (0..2000).map(|i| (i, (i % 7) as f64)).collect();
        points[1234].1 = 1000.0;
        let kept = lttb(&points, 100);
        assert_eq!(kept.len(), 100);
        assert_eq!((kept[0], kept[99]), (points[0], points[1999]));
        assert!(kept.contains(&(1234, 1000.0)), "the spike survives");
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn reducing_keeps_the_gaps_where_they_were() {
        let points: Vec<(i64, Option<f64>)> = (0..3000)
            .map(|i| {
                (
                    i,
                    if (1000..1100).contains(&i) {
                        None
                    } else {
                        Some((i % 13) as f64)
                    },
                )
            })
            .collect();
        let kept = reduce(&points, 500);
        assert!(kept.len() <= 510, "{}", kept.len());
        let gaps: Vec<i64> = kept.iter().filter(|p| p.1.is_none()).map(|p| p.0).collect();
        assert_eq!(gaps, vec![1000]);
        assert!(
            kept.contains(&(999, Some((999 % 13) as f64)))
                && kept.contains(&(1100, Some((1100 % 13) as f64))),
            "each stretch keeps its ends"
        );
    }

    #[test]
    fn values_equal_up_to_rounding_draw_a_flat_axis_not_an_endless_loop() {
        let s = Series {
            name: "avg".into(),
            points: vec![
                (10_000, Some(0.1)),
                (20_000, Some(0.1 + 0.2 - 0.2 + 1e-17)),
                (30_000, Some(0.10000000000000002)),
            ],
        };
        let svg = lines(&[s], &frame());
        assert_eq!(
            svg.matches(r#"class="tick y""#).count(),
            1,
            "one tick on a flat axis"
        );
        assert!(svg.len() < 20_000, "{}", svg.len());
    }

    #[test]
    fn huge_and_non_finite_values_are_drawn_with_a_bounded_axis() {
        for (a, b) in [
            (1.7e308, -1.7e308),
            (f64::MAX, f64::MAX * 0.99),
            (1e21, 1e21 + 1e6),
            (1e21, 3e21),
            (-1e-300, 1e-300),
        ] {
            let s = Series {
                name: "x".into(),
                points: vec![
                    (10_000, Some(a)),
                    (20_000, Some(b)),
                    (30_000, Some(f64::NAN)),
                    (40_000, Some(f64::INFINITY)),
                ],
            };
            let svg = lines(&[s], &frame());
            let ticks = svg.matches(r#"class="tick y""#).count();
            assert!((1..=MAX_Y_TICKS).contains(&ticks), "{a} {b}: {ticks} ticks");
            assert!(
                !svg.contains("NaN") && !svg.contains("inf"),
                "{a} {b}: {svg}"
            );
        }
    }

    #[test]
    fn a_time_axis_of_centuries_or_at_the_ends_of_time_has_few_ticks() {
        for (from, to) in [
            (0, 4_000_000_000_000),
            (i64::MIN, i64::MAX),
            (i64::MAX - 10, i64::MAX),
            (-62_135_596_800_000, 1_700_000_000_000),
        ] {
            let ticks = time_ticks(from, to);
            assert!(
                ticks.len() as i64 <= MAX_TIME_TICKS
                    && ticks.iter().all(|t| (from..=to).contains(t)),
                "{from}..{to}: {ticks:?}"
            );
            let _ = lines(
                &[],
                &Frame {
                    from,
                    to,
                    unit: "",
                    hidden: 0,
                    band: None,
                },
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_finite_range_gives_a_bounded_number_of_ticks_inside_it(a in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO, b in proptest::num::f64::NORMAL | proptest::num::f64::ZERO, near in proptest::bool::ANY) {
            // `near`: the second value a few float spacings from the first, as averages give.
            let b = if near { f64::from_bits(a.to_bits().wrapping_add(3)) } else { b };
            proptest::prop_assume!(b.is_finite());
            let axis = y_axis(a.min(b), a.max(b));
            proptest::prop_assert!(!axis.ticks.is_empty() && axis.ticks.len() <= MAX_Y_TICKS);
            proptest::prop_assert!(axis.ticks.iter().all(|t| t.is_finite()));
            for v in [a, b] {
                let py = axis.y(v);
                proptest::prop_assert!((PAD_T..=H - PAD_B).contains(&py), "{v} drawn at {py}");
            }
        }

        #[test]
        fn any_time_range_gives_a_bounded_number_of_ticks_inside_it(from in proptest::num::i64::ANY, len in proptest::num::i64::ANY) {
            let to = from.saturating_add(len.abs());
            let ticks = time_ticks(from, to);
            proptest::prop_assert!(ticks.len() as i64 <= MAX_TIME_TICKS);
            proptest::prop_assert!(ticks.iter().all(|t| (from..=to).contains(t)));
        }
    }

    #[test]
    fn y_ticks_are_round_and_cover_the_values() {
        assert_eq!(y_range(3.0, 97.0), (0.0, 100.0, 25.0));
        assert!((y_range(0.051, 0.072).2 - 0.01).abs() < 1e-12);
        let (lo, hi, _) = y_range(0.051, 0.072);
        assert!(lo <= 0.051 && hi >= 0.072 && lo > 0.0);
    }
}
