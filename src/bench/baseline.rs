//! The baselines the runner is measured against: the same work written directly, without the
//! runner's abstractions (plain-Rust generation; raw librdkafka and MongoDB driver calls).

use crate::event::Event;
use chrono::Utc;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::weighted::WeightedAliasIndex;

/// The shipped generator's distributions, hand-written in Rust with the same samplers.
pub struct PlainGenerator {
    users: Vec<String>,
    items: Vec<String>,
    user_ranks: WeightedAliasIndex<f64>,
    item_ranks: WeightedAliasIndex<f64>,
    type_table: WeightedAliasIndex<f64>,
    rng: SmallRng,
    seq: u64,
}

const TYPES: [&str; 5] = ["view", "click", "add_to_cart", "purchase", "share"];

impl PlainGenerator {
    pub fn new(users: usize, items: usize, skew: f64) -> Self {
        let zipf = |n: usize| (1..=n).map(|k| (k as f64).powf(-skew)).collect::<Vec<f64>>();
        PlainGenerator {
            users: (1..=users).map(|k| format!("user_{k}")).collect(),
            items: (1..=items).map(|k| format!("item_{k}")).collect(),
            user_ranks: WeightedAliasIndex::new(zipf(users)).unwrap(),
            item_ranks: WeightedAliasIndex::new(zipf(items)).unwrap(),
            type_table: WeightedAliasIndex::new(vec![0.65, 0.20, 0.10, 0.03, 0.02]).unwrap(),
            rng: SmallRng::seed_from_u64(1),
            seq: 0,
        }
    }

    pub fn fill(&mut self, n: usize, out: &mut Vec<Event>) {
        let r2 = |v: f64| (v * 100.0).round() / 100.0;
        for _ in 0..n {
            let rng = &mut self.rng;
            let t = TYPES[rng.sample(&self.type_table)];
            let value = r2(rng.random_range(0.0..10.0));
            out.push(Event {
                event_id: format!("plain-{:x}", self.seq),
                user_id: self.users[rng.sample(&self.user_ranks)].clone(),
                item_id: self.items[rng.sample(&self.item_ranks)].clone(),
                interaction_type: t.to_string(),
                timestamp: Utc::now(),
                session_id: uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string(),
                value,
                price: (t == "purchase").then(|| r2(rng.random_range(5.0..500.0))),
                view_duration: (t == "view").then(|| rng.random_range(1..=120) as f64),
                attributes: Default::default(),
            });
            self.seq += 1;
        }
    }
}
