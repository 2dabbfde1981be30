//! Walker's alias method: O(1) sampling from a fixed discrete distribution, so a Zipf pick over
//! 100,000 users costs the same as a pick over five interaction types.

use rand::Rng;

/// A precomputed table for sampling indices in proportion to their weights.
#[derive(Debug, Clone)]
pub struct AliasTable {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl AliasTable {
    /// Builds the table; weights must be finite, non-negative, not all zero.
    pub fn new(weights: &[f64]) -> Result<Self, String> {
        let n = weights.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(format!("needs between 1 and {} weights, got {n}", u32::MAX));
        }
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err("weights must be finite and not negative".into());
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err("weights must not all be zero".into());
        }
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Ok(AliasTable { prob, alias })
    }

    /// Draws one index.
    #[inline]
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let i = rng.random_range(0..self.prob.len());
        if rng.random::<f64>() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn frequencies_follow_weights() {
        let t = AliasTable::new(&[0.65, 0.20, 0.10, 0.03, 0.02]).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 5];
        let n = 200_000;
        for _ in 0..n {
            counts[t.sample(&mut rng)] += 1;
        }
        for (c, w) in counts.iter().zip([0.65, 0.20, 0.10, 0.03, 0.02]) {
            assert!((*c as f64 / n as f64 - w).abs() < 0.005, "{counts:?}");
        }
    }

    #[test]
    fn zero_weight_is_never_drawn() {
        let t = AliasTable::new(&[1.0, 0.0, 3.0]).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..10_000).all(|_| t.sample(&mut rng) != 1));
    }

    #[test]
    fn bad_weights_are_rejected() {
        assert!(AliasTable::new(&[]).is_err());
        assert!(AliasTable::new(&[0.0, 0.0]).is_err());
        assert!(AliasTable::new(&[1.0, -1.0]).is_err());
    }
}
