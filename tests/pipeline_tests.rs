//! `runner test` passes on the shipped tests and fails on a wrong expectation, for metric tests
//! and for alert fixtures (rules on a simulated clock).

mod common;

fn runner_test(pipeline: &std::path::Path, tests: Option<&std::path::Path>) -> (bool, String) {
    let mut cmd = common::runner();
    cmd.arg("test").arg(pipeline);
    if let Some(t) = tests {
        cmd.arg("--tests").arg(t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn runner_test_passes_on_every_shipped_pipeline() {
    for (file, passed) in [
        ("pipelines/interactions.toml", 20),
        ("pipelines/sensors.toml", 2),
    ] {
        let (ok, out) = runner_test(&common::repo_root().join(file), None);
        assert!(ok, "{file}: {out}");
        assert!(
            out.contains(&format!("{passed} passed, 0 failed")),
            "{file}: {out}"
        );
    }
}

#[test]
fn runner_test_fails_on_wrong_expectation() {
    let shipped =
        std::fs::read_to_string(common::repo_root().join("pipelines/interactions.test.toml"))
            .unwrap();
    let wrong = shipped.replacen("revenue_per_minute = 25.5", "revenue_per_minute = 26.5", 1);
    assert_ne!(wrong, shipped);
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("wrong.test.toml");
    std::fs::write(&tests, wrong).unwrap();
    let (ok, out) = runner_test(&common::shipped_pipeline(), Some(&tests));
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAILED  seed metrics over one window"),
        "{out}"
    );
    assert!(
        out.contains("revenue_per_minute: expected 26.5, got 25.5"),
        "{out}"
    );
    assert!(out.contains("19 passed, 1 failed"), "{out}");
}

#[test]
fn alert_fixtures_pass() {
    let started = std::time::Instant::now();
    let (ok, out) = runner_test(&common::shipped_pipeline(), None);
    assert!(ok, "{out}");
    for rule_test in [
        "a viral item fires after `for`, rides out a dip, and resolves after keep_firing_for",
        "purchases stopping fires, and recovering resolves a minute later",
        "traffic falling to a tenth fires; its return resolves",
        "a consumer falling behind fires after a minute and resolves when it catches up",
        "the window emptying is a no-data alert after `for`, resolved when data returns",
        "no traffic at all is a traffic drop (no_data = alerting)",
        "a value the condition reads that does not exist is an error alert, not silently false",
    ] {
        assert!(
            out.contains(&format!("ok      {rule_test}")),
            "{rule_test}: {out}"
        );
    }
    // Minutes of simulated alerting, checked without waiting for them.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// A fixture whose expected transitions differ from the rule's fails and shows both; so does
/// the shipped fixture against a rule without keep_firing_for (the dip then resolves and fires
/// again).
#[test]
fn alert_fixture_mismatch_fails() {
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(common::repo_root().join("pipelines/interactions.test.toml"))
            .unwrap();
    let wrong = shipped.replacen(
        "at = \"10m30s\"\nchange = \"firing\"",
        "at = \"10m20s\"\nchange = \"firing\"",
        1,
    );
    assert_ne!(wrong, shipped);
    let tests = dir.path().join("wrong.test.toml");
    std::fs::write(&tests, wrong).unwrap();
    let (ok, out) = runner_test(&common::shipped_pipeline(), Some(&tests));
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAILED  a viral item fires after `for`"),
        "{out}"
    );
    assert!(
        out.contains("expected [10m pending") && out.contains("10m20s firing"),
        "{out}"
    );
    assert!(
        out.contains("got      [10m pending {\"item\": \"item_42\"}, 10m30s firing"),
        "{out}"
    );

    // The same fixtures against the shipped file with keep_firing_for taken out.
    let pipeline = common::copy_pipeline(dir.path());
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("keep_firing_for = \"30s\"", "keep_firing_for = \"0s\"");
    std::fs::write(&pipeline, text).unwrap();
    let (ok, out) = runner_test(
        &pipeline,
        Some(&common::repo_root().join("pipelines/interactions.test.toml")),
    );
    assert!(!ok, "{out}");
    assert!(
        // The viral item's fixture and the forty items' (whose resolution moves too).
        out.contains("11m resolved") && out.contains("2 failed"),
        "{out}"
    );
}
