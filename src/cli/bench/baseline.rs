//! The baselines the runner is measured against: the same work written directly, without the
//! runner's abstractions (plain-Rust generation; raw librdkafka and MongoDB driver calls).

use crate::event::{FieldType, Origin, Record, Schema, Value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// Records of the pipeline's schema filled by hand-written Rust: every declared field with a
/// value of its type drawn uniformly (text from a prebuilt pool of labels), the id and time set
/// as the generator sets them. What a generator costs with no plan to interpret.
pub struct PlainGenerator {
    schema: Arc<Schema>,
    labels: Vec<String>,
    rng: SmallRng,
    seq: u64,
}

impl PlainGenerator {
    pub fn new(schema: Arc<Schema>) -> Self {
        PlainGenerator {
            schema,
            labels: (1..=1000).map(|k| format!("label_{k}")).collect(),
            rng: SmallRng::seed_from_u64(1),
            seq: 0,
        }
    }

    pub fn fill(&mut self, n: usize, out: &mut Vec<Record>) {
        let now = chrono::Utc::now().timestamp_millis();
        let (id, time) = (self.schema.id_slot(), self.schema.time_slot());
        for _ in 0..n {
            let mut r = Record::new(&self.schema);
            for (i, f) in self.schema.fields().iter().enumerate() {
                let rng = &mut self.rng;
                let v = match f.spec.ty {
                    _ if i == id || i == time || f.origin != Origin::Declared => continue,
                    FieldType::String => Value::Text(
                        self.labels[rng.random_range(0..self.labels.len())]
                            .as_str()
                            .into(),
                    ),
                    FieldType::Int => Value::Int(rng.random_range(0..1000)),
                    FieldType::Float => {
                        Value::Float((rng.random_range(0.0..500.0f64) * 100.0).round() / 100.0)
                    }
                    FieldType::Bool => Value::Bool(rng.random()),
                    FieldType::Timestamp => Value::Time(now),
                };
                r.set(i, v);
            }
            r.set_id(compact_str::format_compact!("plain-{:x}", self.seq));
            r.set_time_ms(now);
            out.push(r);
            self.seq += 1;
        }
    }
}
