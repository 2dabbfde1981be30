//! The generator script against the seed's event shape.

mod common;

use std::collections::HashMap;

#[test]
fn generate_matches_seed_shape() {
    let mut pipeline = common::embedded_pipeline(std::path::Path::new("unused"));
    pipeline.config.generator.seed = Some(7);
    let n = 100_000;
    let mut out = Vec::new();
    runner::commands::generate(&pipeline, n, &mut out).unwrap();

    let mut types: HashMap<String, u64> = HashMap::new();
    let mut per_user: HashMap<String, u64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut lines = 0;
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        lines += 1;
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let o = v.as_object().unwrap();
        let s = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("{k} missing or not a string: {v}"));
        assert!(s("user_id").starts_with("user_"));
        assert!(s("item_id").starts_with("item_"));
        assert!(ids.insert(s("event_id").to_string()), "event_id repeats");
        assert!(uuid::Uuid::parse_str(s("session_id")).is_ok());
        let ts = s("timestamp");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'), "{ts}");
        let value = o["value"].as_f64().unwrap();
        assert!((0.0..=10.0).contains(&value) && (value * 100.0 - (value * 100.0).round()).abs() < 1e-6);
        let t = s("interaction_type").to_string();
        assert_eq!(o.contains_key("price"), t == "purchase", "price exactly on purchases: {v}");
        if let Some(p) = o.get("price") {
            assert!((5.0..=500.0).contains(&p.as_f64().unwrap()));
        }
        assert_eq!(o.contains_key("view_duration"), t == "view", "view_duration exactly on views: {v}");
        if let Some(d) = o.get("view_duration") {
            let d = d.as_f64().unwrap();
            assert!((1.0..=120.0).contains(&d) && d.fract() == 0.0);
        }
        *types.entry(t).or_default() += 1;
        *per_user.entry(s("user_id").to_string()).or_default() += 1;
    }
    assert_eq!(lines, n);
    for (t, w) in [("view", 0.65), ("click", 0.20), ("add_to_cart", 0.10), ("purchase", 0.03), ("share", 0.02)] {
        let share = types[t] as f64 / n as f64;
        assert!((share - w).abs() <= 0.01, "{t}: {share:.4} vs weight {w}");
    }
    let mut counts: Vec<u64> = per_user.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let users = match pipeline.config.generator.params["USERS"] {
        runner::generator::Param::Int(n) => n as usize,
        ref other => panic!("USERS is {other:?}"),
    };
    let top = counts.iter().take(users / 10).sum::<u64>() as f64 / n as f64;
    println!("top 10% of {users} users account for {:.1}% of interactions", top * 100.0);
    assert!(top > 0.5, "skew too weak: top 10% of users have {top:.3} of events");
}
