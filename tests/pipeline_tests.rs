//! `runner test` passes on the shipped tests and fails on a wrong expectation.

mod common;


fn runner_test(pipeline: &std::path::Path, tests: Option<&std::path::Path>) -> (bool, String) {
    let mut cmd = common::runner();
    cmd.arg("test").arg(pipeline);
    if let Some(t) = tests {
        cmd.arg("--tests").arg(t);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn runner_test_passes_on_every_shipped_pipeline() {
    for (file, passed) in [("pipelines/interactions.toml", 3), ("pipelines/sensors.toml", 2)] {
        let (ok, out) = runner_test(&common::repo_root().join(file), None);
        assert!(ok, "{file}: {out}");
        assert!(out.contains(&format!("{passed} passed, 0 failed")), "{file}: {out}");
    }
}

#[test]
fn runner_test_fails_on_wrong_expectation() {
    let shipped = std::fs::read_to_string(common::repo_root().join("pipelines/interactions.test.toml")).unwrap();
    let wrong = shipped.replacen("revenue_per_minute = 25.5", "revenue_per_minute = 26.5", 1);
    assert_ne!(wrong, shipped);
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("wrong.test.toml");
    std::fs::write(&tests, wrong).unwrap();
    let (ok, out) = runner_test(&common::shipped_pipeline(), Some(&tests));
    assert!(!ok, "{out}");
    assert!(out.contains("FAILED  seed metrics over one window"), "{out}");
    assert!(out.contains("revenue_per_minute: expected 26.5, got 25.5"), "{out}");
    assert!(out.contains("2 passed, 1 failed"), "{out}");
}
