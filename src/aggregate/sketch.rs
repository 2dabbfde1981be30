//! A HyperLogLog distinct-count sketch: 4,096 one-byte registers (4 KiB), standard error about
//! 1.6%, mergeable by taking the larger register. Distinct counts switch to it once their exact
//! set grows past the metric's `exact_limit`.

use serde::{Deserialize, Serialize};

const P: u32 = 12;
const M: usize = 1 << P;

/// HyperLogLog registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    #[serde(with = "hex")]
    registers: Vec<u8>,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            registers: vec![0; M],
        }
    }
}

/// A stable 64-bit hash (stored sketches must mean the same after an upgrade): FNV-1a, then
/// the MurmurHash3 finaliser to spread the bits.
fn hash(s: &str) -> u64 {
    let mut h = crate::base::fnv1a(s.as_bytes());
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Sketch {
    pub fn insert(&mut self, s: &str) {
        let h = hash(s);
        let index = (h >> (64 - P)) as usize;
        let rank = ((h << P) | (1 << (P - 1))).leading_zeros() as u8 + 1;
        if rank > self.registers[index] {
            self.registers[index] = rank;
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (a, b) in self.registers.iter_mut().zip(&other.registers) {
            *a = (*a).max(*b);
        }
    }

    /// The estimated number of distinct values.
    pub fn estimate(&self) -> f64 {
        let m = M as f64;
        let sum: f64 = self.registers.iter().map(|r| 2f64.powi(-(*r as i32))).sum();
        let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln() // linear counting for small cardinalities
        } else {
            raw
        }
    }
}

mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != super::M * 2 || !text.is_ascii() {
            return Err(serde::de::Error::custom(format!(
                "a stored sketch must be {} hex digits (4096 registers), got {} bytes",
                super::M * 2,
                text.len()
            )));
        }
        // ASCII, so every two bytes are two characters: slicing cannot split one.
        (0..text.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| {
                    serde::de::Error::custom(format!("a stored sketch is not hex: {e}"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_is_within_a_few_percent() {
        for n in [1_000usize, 50_000, 300_000] {
            let mut s = Sketch::default();
            for i in 0..n {
                s.insert(&format!("user_{i}"));
            }
            let err = (s.estimate() - n as f64).abs() / n as f64;
            assert!(
                err < 0.05,
                "n={n}: estimate {} ({:.2}% off)",
                s.estimate(),
                err * 100.0
            );
        }
    }

    #[test]
    fn merge_equals_one_sketch_of_the_union() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for i in 0..20_000 {
            let v = format!("v{i}");
            if i % 3 == 0 {
                a.insert(&v)
            } else {
                b.insert(&v)
            }
            all.insert(&v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        let back: Sketch = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        // A damaged stored sketch is an error, never a panic (multi-byte text of the right length
        // used to split a character when sliced).
        let damaged = format!("{}é", "0".repeat(M * 2 - 2));
        assert_eq!(damaged.len(), M * 2);
        let err = serde_json::from_value::<Sketch>(serde_json::json!({ "registers": damaged }))
            .unwrap_err();
        assert!(err.to_string().contains("4096 registers"), "{err}");
        assert!(serde_json::from_value::<Sketch>(
            serde_json::json!({ "registers": "zz".repeat(M) })
        )
        .is_err());
        assert_eq!(back, a);
    }
}
