//! Quantiles of a stream of numbers: exact while a partial holds few values, then a DDSketch
//! (Masson, Rim and Lee, VLDB 2019). A value falls in the bucket `ceil(log_γ |v|)` with
//! γ = 2^(1/35), and a bucket reports `2γ^k / (γ + 1)`, so every reported quantile is within
//! (γ − 1) / (γ + 1) = 0.99 % (relative) of the value of that rank.
//!
//! Written here rather than taken from `sketches-ddsketch`: a partial must be the same state
//! however its records were split into partials and merged (replays, crashes and several
//! partitions must not make a p95 drift), so the state holds only integer counts, the exact
//! minimum and maximum, and sorted exact values — no float sum whose rounding depends on the
//! order — and it is stored as a few runs of counts instead of a dense bin array.

use serde::{Deserialize, Serialize};

/// Relative accuracy of a reported quantile.
pub const ACCURACY: f64 = 0.01;
/// Values a partial keeps exactly before it becomes buckets, at most (a metric's `exact_limit`
/// may set fewer): 64 floats stored per pane and key keep small states small.
pub const EXACT: usize = 64;
/// Buckets per sign at most: 2,048 buckets span a factor of 10^17 at 1 %. Past it the buckets
/// nearest zero are folded into the lowest kept one (the low quantiles of a stream of more
/// distinct magnitudes than that lose accuracy; the high ones, what a p95 or p99 asks, keep
/// theirs).
const MAX_BINS: usize = 2048;
/// Magnitudes below this count as zero (`ln` of them would leave the bucket range).
const TINY: f64 = 1e-9;

/// Buckets per doubling: γ = 2^(1/35). A whole number of buckets per doubling lets a value's
/// bucket come from its float bits (the exponent × 35, plus the mantissa's place among 35
/// bounds, found with a table and one comparison) instead of a logarithm per value, the cost
/// of most of the reducer's work.
const PER_OCTAVE: i32 = 35;

/// The bounds of the buckets within one doubling, and for each of the 128 slices of the
/// mantissa the first bound at or above it.
struct Octave {
    /// `2^(j/35)` for j in 0..=35.
    bounds: [f64; PER_OCTAVE as usize + 1],
    /// Per top-7-bit mantissa slice `[1 + c/128, 1 + (c+1)/128)`: the first j whose bound is at
    /// or above the slice's start. A bucket is 2 % wide and a slice under 0.8 %, so the
    /// mantissa's bucket is that j or the next.
    first: [u8; 128],
}

static OCTAVE: std::sync::LazyLock<Octave> = std::sync::LazyLock::new(|| {
    let mut bounds = [0.0; PER_OCTAVE as usize + 1];
    for (j, b) in bounds.iter_mut().enumerate() {
        *b = (j as f64 / PER_OCTAVE as f64).exp2();
    }
    bounds[PER_OCTAVE as usize] = 2.0;
    let mut first = [0u8; 128];
    for (c, f) in first.iter_mut().enumerate() {
        let start = 1.0 + c as f64 / 128.0;
        *f = bounds.iter().position(|b| *b >= start).unwrap_or(0) as u8;
    }
    Octave { bounds, first }
});

/// The quantile state of one group of one partial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Digest {
    /// Every value, sorted (so equal multisets are equal states).
    Exact(Vec<f64>),
    Buckets(Buckets),
}

impl Default for Digest {
    fn default() -> Self {
        Digest::Exact(Vec::new())
    }
}

/// Bucket counts of one sign, `(key, count)` sorted by key. Sparse: values 1.5 and 1e308 are two
/// buckets, not the 35,000 between them. A sorted vector rather than a B-tree: a record's
/// bucket is found by a binary search over contiguous memory (a new bucket, rare once a stream
/// has warmed up, moves the ones above it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bins(Vec<(i32, u64)>);

impl Bins {
    /// Adds `n` values of bucket `key`. At most [`MAX_BINS`] buckets are kept, the highest
    /// keys seen; lower ones are counted in the lowest kept bucket. Which buckets are kept
    /// depends only on the keys seen, so the state does not depend on the order values arrived
    /// or partials merged.
    #[inline]
    fn add(&mut self, key: i32, n: u64) {
        match self.0.binary_search_by_key(&key, |b| b.0) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => {
                self.0.insert(i, (key, n));
                if self.0.len() > MAX_BINS {
                    let (_, folded) = self.0.remove(0);
                    self.0[0].1 += folded;
                }
            }
        }
    }

    fn merge(&mut self, other: &Bins) {
        other.0.iter().for_each(|(k, n)| self.add(*k, *n));
    }

    /// `(key, count)` of the buckets, lowest key first.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        self.0.iter().copied()
    }
}

/// Values past the exact limit: counts by bucket for each sign, zeros, and the exact extremes
/// (a quantile never reports past them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    n: u64,
    min: f64,
    max: f64,
    zeros: u64,
    positive: Bins,
    negative: Bins,
}

impl Buckets {
    fn new() -> Buckets {
        Buckets {
            n: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            zeros: 0,
            positive: Bins::default(),
            negative: Bins::default(),
        }
    }

    fn add(&mut self, v: f64, n: u64) {
        self.n += n;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if v.abs() < TINY {
            self.zeros += n;
        } else if v > 0.0 {
            self.positive.add(key(v), n);
        } else {
            self.negative.add(key(-v), n);
        }
    }

    fn merge(&mut self, other: &Buckets) {
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.zeros += other.zeros;
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
    }

    /// The value of 0-based rank `rank`: buckets walked from the most negative value up.
    fn at_rank(&self, rank: u64) -> f64 {
        let ordered = self
            .negative
            .iter()
            .rev()
            .map(|(k, n)| (-value(k), n))
            .chain(std::iter::once((0.0, self.zeros)))
            .chain(self.positive.iter().map(|(k, n)| (value(k), n)));
        let mut seen = 0;
        for (v, n) in ordered {
            seen += n;
            if seen > rank {
                return v.clamp(self.min, self.max);
            }
        }
        self.max
    }
}

/// `ceil(log_γ magnitude)` of a positive normal float, from its bits.
#[inline]
fn key(magnitude: f64) -> i32 {
    let bits = magnitude.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mantissa = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    let octave = &*OCTAVE;
    let mut j = octave.first[((bits >> 45) & 0x7f) as usize] as usize;
    if mantissa > octave.bounds[j] {
        j += 1;
    }
    exponent * PER_OCTAVE + j as i32
}

/// The value a bucket reports: within ACCURACY of every value of the bucket.
fn value(key: i32) -> f64 {
    let gamma = (1.0 / PER_OCTAVE as f64).exp2();
    2.0 * (key as f64 / PER_OCTAVE as f64).exp2() / (gamma + 1.0)
}

impl Digest {
    /// Adds a finite value (the metric refuses NaN and infinities before they get here); past
    /// `exact` values (at most [`EXACT`]) the digest becomes buckets. A metric always passes
    /// the same `exact`, so whether a state is exact depends only on how many values it holds.
    #[inline]
    pub fn add(&mut self, v: f64, exact: usize) {
        match self {
            Digest::Exact(values) => {
                let at = values.partition_point(|x| *x < v);
                values.insert(at, v);
                if values.len() > exact.min(EXACT) {
                    self.become_buckets();
                }
            }
            Digest::Buckets(b) => b.add(v, 1),
        }
    }

    fn become_buckets(&mut self) {
        if let Digest::Exact(values) = self {
            let mut b = Buckets::new();
            values.iter().for_each(|v| b.add(*v, 1));
            *self = Digest::Buckets(b);
        }
    }

    pub fn merge(&mut self, other: &Digest, exact: usize) {
        match (&mut *self, other) {
            (Digest::Buckets(a), Digest::Buckets(b)) => a.merge(b),
            (_, Digest::Exact(values)) => values.iter().for_each(|v| self.add(*v, exact)),
            (Digest::Exact(_), Digest::Buckets(_)) => {
                self.become_buckets();
                self.merge(other, exact);
            }
        }
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        match self {
            Digest::Exact(values) => values.len() as u64,
            Digest::Buckets(b) => b.n,
        }
    }

    /// The nearest-rank quantile: the smallest value with at least `q` of the values at or
    /// below it (0-based rank `ceil(q * n) - 1`; the p95 of 1..=10 is 10, the p50 is 5), exact
    /// while the digest is exact and within [`ACCURACY`] after; `None` with no values.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = nearest_rank(q, n as usize);
        Some(match self {
            Digest::Exact(values) => values[rank],
            Digest::Buckets(b) => b.at_rank(rank as u64),
        })
    }
}

/// The 0-based index of quantile `q` among `n` sorted values, nearest rank: the smallest value
/// with at least `q` of them at or below it (`ceil(q * n) - 1`). Tests and the bench compute
/// exact quantiles with it, so they use the definition the reducer does.
pub fn nearest_rank(q: f64, n: usize) -> usize {
    ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).saturating_sub(1)
}

/// The label of a quantile in a report: `p50`, `p95`, `p99.9`.
pub fn label(q: f64) -> String {
    let pct = format!("{:.3}", q * 100.0);
    format!("p{}", pct.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn exact_quantile(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[nearest_rank(q, sorted.len())]
    }

    #[test]
    fn a_few_values_give_exact_quantiles() {
        let mut d = Digest::default();
        for v in [5.0, 1.0, 4.0, 2.0, 3.0] {
            d.add(v, EXACT);
        }
        assert_eq!(d.quantile(0.0), Some(1.0));
        assert_eq!(d.quantile(0.5), Some(3.0));
        assert_eq!(d.quantile(0.95), Some(5.0));
        assert_eq!(d.quantile(0.6), Some(3.0));
        assert_eq!(d.quantile(1.0), Some(5.0));
        assert_eq!(Digest::default().quantile(0.5), None);
    }

    #[test]
    fn quantiles_of_many_values_stay_within_one_percent_whatever_their_sign_and_range() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let streams: Vec<Vec<f64>> = vec![
            // Log-normal view durations, mixed-sign temperatures, values up to 1e308.
            (0..50_000)
                .map(|_| (rng.random::<f64>() * 6.0).exp())
                .collect(),
            (0..50_000).map(|_| rng.random_range(-30.0..45.0)).collect(),
            (0..20_000)
                .map(|i| if i % 2 == 0 { 1e308 } else { 1.5 })
                .collect(),
        ];
        for values in streams {
            let mut d = Digest::default();
            values.iter().for_each(|v| d.add(*v, EXACT));
            for q in [0.01, 0.25, 0.5, 0.95, 0.99, 1.0] {
                let (got, want) = (d.quantile(q).unwrap(), exact_quantile(&values, q));
                // Mixed signs: a value near zero is off by 1 % of itself, or counted as zero.
                assert!(
                    (got - want).abs() <= ACCURACY * want.abs() + TINY,
                    "q={q}: {got} against {want}"
                );
            }
        }
    }

    #[test]
    fn partials_merged_in_any_order_equal_one_pass() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let values: Vec<f64> = (0..3_000)
            .map(|_| rng.random_range(-50.0..5_000.0))
            .collect();
        let mut one = Digest::default();
        values.iter().for_each(|v| one.add(*v, EXACT));
        for parts in [2usize, 7, 100, 1_000] {
            let mut partials = vec![Digest::default(); parts];
            for v in &values {
                partials[rng.random_range(0..parts)].add(*v, EXACT);
            }
            let mut merged = Digest::default();
            while let Some(p) = partials.pop() {
                // Merged in a shuffled order, some into a fresh digest first.
                let at = rng.random_range(0..=partials.len());
                partials.insert(at, Digest::default());
                merged.merge(&p, EXACT);
                partials.remove(at);
            }
            assert_eq!(merged, one, "{parts} partials");
        }
        let stored = serde_json::to_string(&one).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&stored).unwrap(), one);
    }

    #[test]
    fn a_stream_spanning_more_than_the_bucket_range_keeps_its_high_quantiles() {
        let mut d = Digest::default();
        // 1e-8 .. 1e300 in steps of 5 %: far more than 2,048 buckets.
        let values: Vec<f64> = (0..15_000)
            .map(|i| 1e-8 * 1.05f64.powi(i))
            .filter(|v| v.is_finite())
            .collect();
        values.iter().for_each(|v| d.add(*v, EXACT));
        if let Digest::Buckets(b) = &d {
            assert!(b.positive.0.len() <= MAX_BINS);
        }
        let (got, want) = (d.quantile(0.99).unwrap(), exact_quantile(&values, 0.99));
        assert!(
            (got - want).abs() <= ACCURACY * want,
            "{got} against {want}"
        );
        assert_eq!(d.count(), values.len() as u64);
    }

    #[test]
    fn a_values_bucket_from_its_bits_is_the_ceiling_of_its_logarithm() {
        let gamma = (1.0 / PER_OCTAVE as f64).exp2();
        assert!((gamma - 1.0) / (gamma + 1.0) <= ACCURACY);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        for _ in 0..200_000 {
            let v = (rng.random_range(-20.0..20.0f64)).exp2() * rng.random_range(1.0..2.0);
            let exact = (v.ln() / gamma.ln()).ceil() as i32;
            let k = key(v);
            // Equal, but for a value within float rounding of a bound.
            if k != exact {
                let bound = (exact as f64 / PER_OCTAVE as f64)
                    .exp2()
                    .min((k as f64 / PER_OCTAVE as f64).exp2());
                assert!((v / bound - 1.0).abs() < 1e-12, "{v}: {k} against {exact}");
            }
            let reported = value(k);
            assert!(
                (reported - v).abs() <= ACCURACY * v,
                "{v} reported as {reported}"
            );
        }
        // Bounds themselves and powers of two.
        for j in -70..70 {
            let v = (j as f64 / PER_OCTAVE as f64).exp2();
            assert!((key(v) - j).abs() <= 1, "{v}");
            assert_eq!(key(2f64.powi(j)), j * PER_OCTAVE);
        }
    }

    #[test]
    fn labels_name_the_percentile() {
        assert_eq!(label(0.5), "p50");
        assert_eq!(label(0.95), "p95");
        assert_eq!(label(0.999), "p99.9");
        assert_eq!(label(1.0), "p100");
    }
}
