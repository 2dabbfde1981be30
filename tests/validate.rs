//! `runner validate` reports bad files with their file and line, and accepts the shipped one.

mod common;


fn validate(path: &std::path::Path) -> (bool, String, String) {
    let out = common::runner().arg("validate").arg(path).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn validate_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(common::shipped_pipeline()).unwrap();
    let script = common::repo_root().join("scripts/generator.rhai");

    // An unknown key in [generator]: named with its file and line.
    let bad_key = dir.path().join("bad_key.toml");
    let text = shipped
        .replace("../scripts/generator.rhai", script.to_str().unwrap())
        .replace("batch_size = 100", "batch_size = 100\nbatch_sise = 5");
    let line = text.lines().position(|l| l.starts_with("batch_sise")).unwrap() + 1;
    std::fs::write(&bad_key, &text).unwrap();
    let (ok, _, err) = validate(&bad_key);
    assert!(!ok);
    assert!(err.contains(&format!("{}:{line}:", bad_key.display())), "{err}");
    assert!(err.contains("unknown field `batch_sise`"), "{err}");

    // A syntax error in the script: named with the script's file and line.
    let bad_script = dir.path().join("gen.rhai");
    std::fs::write(&bad_script, "// line 1\nlet x = ;\n#{}").unwrap();
    let pipeline = dir.path().join("bad_script.toml");
    std::fs::write(&pipeline, shipped.replace("../scripts/generator.rhai", "gen.rhai")).unwrap();
    let (ok, _, err) = validate(&pipeline);
    assert!(!ok);
    assert!(err.contains(&format!("{}:2:", bad_script.display())), "{err}");
}

#[test]
fn shipped_pipeline_validates() {
    let (ok, out, err) = validate(&common::shipped_pipeline());
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "ok");
}
