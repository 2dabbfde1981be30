//! The generator script against the seed's event shape.

mod common;

use std::collections::HashMap;

#[test]
fn generate_matches_seed_shape() {
    let mut pipeline = common::embedded_pipeline(std::path::Path::new("unused"));
    pipeline.config.generator.seed = Some(7);
    // Timed at the shipped rate: sessions wait their think times on the simulated clock.
    pipeline.config.generator.rate = 1000.0;
    let n = 100_000;
    let mut out = Vec::new();
    runner::cli::commands::generate(&pipeline, n, false, &mut out).unwrap();

    let mut types: HashMap<String, u64> = HashMap::new();
    let mut per_user: HashMap<String, u64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut lines = 0;
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        lines += 1;
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let o = v.as_object().unwrap();
        let s = |k: &str| {
            o.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("{k} missing or not a string: {v}"))
        };
        assert!(s("user_id").starts_with("user_"));
        assert!(s("item_id").starts_with("item_"));
        assert!(ids.insert(s("event_id").to_string()), "event_id repeats");
        assert!(!s("session_id").is_empty());
        let ts = s("timestamp");
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
            "{ts}"
        );
        let value = o["value"].as_f64().unwrap();
        assert!(
            (0.0..=10.0).contains(&value) && (value * 100.0 - (value * 100.0).round()).abs() < 1e-6
        );
        let t = s("interaction_type").to_string();
        assert_eq!(
            o.contains_key("price"),
            t == "purchase",
            "price exactly on purchases: {v}"
        );
        if let Some(p) = o.get("price") {
            assert!((5.0..=500.0).contains(&p.as_f64().unwrap()));
        }
        assert_eq!(
            o.contains_key("view_duration"),
            t == "view",
            "view_duration exactly on views: {v}"
        );
        if let Some(d) = o.get("view_duration") {
            let d = d.as_f64().unwrap();
            assert!((1.0..=120.0).contains(&d) && d.fract() == 0.0);
        }
        // The first events are mostly sessions' first steps (views): the mix settles once the
        // sessions opened at the start have walked on.
        if lines > 20_000 {
            *types.entry(t).or_default() += 1;
        }
        *per_user.entry(s("user_id").to_string()).or_default() += 1;
    }
    assert_eq!(lines, n);
    // The original generator's mix (65 % views, 20 % clicks, 10 % add_to_cart, 3 % purchases,
    // 2 % shares), which the session state machine of scripts/generator.rhai is calibrated to.
    for (t, w) in [
        ("view", 0.65),
        ("click", 0.20),
        ("add_to_cart", 0.10),
        ("purchase", 0.03),
        ("share", 0.02),
    ] {
        let share = types[t] as f64 / (n - 20_000) as f64;
        assert!(
            (share - w).abs() <= 0.01,
            "{t}: {share:.4} vs the original {w}"
        );
    }
    let mut counts: Vec<u64> = per_user.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let users = match pipeline.config.generator.params["USERS"] {
        runner::generator::Param::Int(n) => n as usize,
        ref other => panic!("USERS is {other:?}"),
    };
    let top = counts.iter().take(users / 10).sum::<u64>() as f64 / n as f64;
    println!(
        "top 10% of {users} users account for {:.1}% of interactions",
        top * 100.0
    );
    assert!(
        top > 0.5,
        "skew too weak: top 10% of users have {top:.3} of events"
    );
}

/// The shipped generator's sessions: in 100,000 events every purchase (and click, add_to_cart and
/// share) is of the item its session viewed last, a session keeps its user, starts with a view,
/// and its length and think times follow the script's description.
#[test]
fn sessions_have_funnel_order() {
    let mut pipeline = common::embedded_pipeline(std::path::Path::new("unused"));
    pipeline.config.generator.seed = Some(11);
    pipeline.config.generator.rate = 1000.0;
    let script =
        runner::generator::GeneratorScript::load(&pipeline.config.generator, &pipeline.schema())
            .unwrap();
    let plan = script
        .sessions()
        .expect("the shipped generator describes sessions")
        .clone();
    let n = 100_000;
    let mut out = Vec::new();
    runner::cli::commands::generate(&pipeline, n, false, &mut out).unwrap();

    struct Seen {
        user: String,
        last_view: Option<String>,
        events: u32,
        first_ms: i64,
        last_ms: i64,
    }
    let mut sessions: HashMap<String, Seen> = HashMap::new();
    let (mut gaps, mut gap_sum) = (0u64, 0i64);
    let mut times = Vec::new();
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("{k} missing: {v}"))
                .to_string()
        };
        let t = chrono::DateTime::parse_from_rfc3339(&s("timestamp"))
            .unwrap()
            .timestamp_millis();
        times.push(t);
        let kind = s("interaction_type");
        let seen = sessions.entry(s("session_id")).or_insert_with(|| {
            assert_eq!(kind, "view", "a session starts with a view: {v}");
            Seen {
                user: s("user_id"),
                last_view: None,
                events: 0,
                first_ms: t,
                last_ms: t,
            }
        });
        assert_eq!(seen.user, s("user_id"), "a session keeps its user: {v}");
        assert!(
            t >= seen.last_ms,
            "a session's events are in time order: {v}"
        );
        // Gaps that start in the first half: those that start late are seen only if short.
        if seen.events > 0 && seen.last_ms < times[0] + 50_000 {
            gaps += 1;
            gap_sum += t - seen.last_ms;
        }
        if kind == "view" {
            seen.last_view = Some(s("item_id"));
        } else {
            assert_eq!(
                seen.last_view.as_deref(),
                Some(s("item_id").as_str()),
                "a {kind} is of the item viewed before it in its session: {v}"
            );
        }
        seen.events += 1;
        seen.last_ms = t;
    }
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "the stream is in time order"
    );

    // Sessions that started in the first half of the stream have ended by its end.
    let (start, end) = (times[0], *times.last().unwrap());
    let early: Vec<&Seen> = sessions
        .values()
        .filter(|s| s.first_ms < start + (end - start) / 2)
        .collect();
    let mean_len = early.iter().map(|s| s.events as f64).sum::<f64>() / early.len() as f64;
    let mean_think = gap_sum as f64 / gaps as f64;
    println!(
        "{} sessions ({} early): mean length {mean_len:.3} (described {:.3}), mean think {mean_think:.0} ms (described {:.0}), over {:.0} s",
        sessions.len(), early.len(), plan.mean_steps, plan.mean_think_ms, (end - start) as f64 / 1000.0
    );
    assert!(
        (mean_len / plan.mean_steps - 1.0).abs() < 0.05,
        "session length {mean_len} vs {}",
        plan.mean_steps
    );
    assert!(
        (mean_think / plan.mean_think_ms - 1.0).abs() < 0.05,
        "think time {mean_think} ms vs {} ms",
        plan.mean_think_ms
    );
    assert!(
        early.iter().all(|s| s.last_ms - s.first_ms < 1_000 * 600),
        "no session lasts ten minutes"
    );
    assert!(sessions.len() > 20_000, "many sessions: {}", sessions.len());
}

/// A stepped rate profile, measured from the stored events' times while the pipeline runs on
/// the embedded default: each step's rate within 5 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_profile_is_followed() {
    use runner::pipeline::{self, Components, RunOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    p.config.generator.rate = 1000.0;
    p.config.generator.profile = Some(
        toml::from_str(r#"steps = [{ at = "3s", factor = 3.0 }, { at = "6s", factor = 0.5 }]"#)
            .unwrap(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let components = Components {
        generator: true,
        consumer: true,
        dashboard: false,
        alerting: false,
    };
    let running = pipeline::start(
        p,
        RunOptions {
            components,
            ..Default::default()
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let store = running.store.clone().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(9_500)).await;
    stop.cancel();
    running.wait().await.unwrap();

    let times: Vec<i64> = store
        .all_events()
        .await
        .unwrap()
        .iter()
        .map(|e| e.time_ms())
        .collect();
    let t0 = *times.iter().min().unwrap();
    // Each step's middle two seconds (the edges share a batch with the step before).
    for (from, to, rate) in [
        (500, 2_500, 1000.0),
        (3_500, 5_500, 3000.0),
        (6_500, 8_500, 500.0),
    ] {
        let n = times
            .iter()
            .filter(|t| (t0 + from..t0 + to).contains(*t))
            .count() as f64;
        let measured = n / ((to - from) as f64 / 1000.0);
        println!("{from}..{to} ms: {measured:.0} events/s (profile {rate})");
        assert!(
            (measured / rate - 1.0).abs() <= 0.05,
            "{from}..{to} ms: {measured:.0} events/s, profile says {rate}"
        );
    }
}
