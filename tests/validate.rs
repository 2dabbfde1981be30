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

/// What the Dockerfile's runtime stage copies into the image is enough: laid out as the image
/// has it, the shipped pipeline validates there (with the variables compose sets), and every
/// variable compose sets for the runner is one the pipeline file reads.
#[test]
fn dockerfile_tree_validates() {
    let root = common::repo_root();
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let copied: Vec<&str> = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(copied.contains(&"templates") && copied.contains(&"scripts"), "{copied:?}");
    let image = tempfile::tempdir().unwrap();
    for path in &copied {
        copy_tree(&root.join(path), &image.path().join(path));
    }

    let compose = std::fs::read_to_string(root.join("docker/docker-compose.yml")).unwrap();
    let env = runner_environment(&compose);
    assert!(env.iter().any(|(k, v)| k == "DASHBOARD_LISTEN" && v.starts_with("0.0.0.0:")), "the dashboard listens beyond the container's loopback: {env:?}");
    let pipeline = std::fs::read_to_string(root.join("pipelines/interactions.toml")).unwrap();
    for (name, _) in &env {
        assert!(pipeline.contains(&format!("${{{name}")), "compose sets {name}, which the pipeline file does not read");
    }
    let out = common::runner()
        .args(["validate", "pipelines/interactions.toml"])
        .current_dir(image.path())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&out.stderr));
}

/// The `environment:` entries of the `runner` service.
fn runner_environment(compose: &str) -> Vec<(String, String)> {
    let service = compose.split("\n  runner:\n").nth(1).expect("a runner service");
    let block = service.split("\n    environment:\n").nth(1).expect("runner environment");
    block
        .lines()
        .take_while(|l| l.starts_with("      "))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// Mistakes in `[event]` are named with the file and the line they are on.
#[test]
fn validate_reports_schema_mistakes_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(common::repo_root().join("pipelines/sensors.toml")).unwrap();
    let scripts = common::repo_root().join("scripts");
    let shipped = shipped.replace("../scripts", scripts.to_str().unwrap()).replace("../templates", common::repo_root().join("templates").to_str().unwrap());
    let check = |name: &str, text: &str, line_of: &str, wanted: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let line = text.lines().position(|l| l.starts_with(line_of)).unwrap() + 1;
        let (ok, _, err) = validate(&path);
        assert!(!ok, "{name}");
        assert!(err.contains(&format!("{}:{line}:", path.display())) && err.contains(wanted), "{name}: {err}");
    };
    check("type.toml", &shipped.replace("temperature = { type = \"float\"", "temperature = { type = \"flaot\""), "temperature =", "unknown field type \"flaot\"");
    check("id.toml", &shipped.replace("id = \"reading_id\"", "id = \"reading\""), "id =", "event.id: \"reading\" is not a declared field");
    check("time.toml", &shipped.replace("time = \"ts\"", "time = \"site\""), "time =", "must be a required timestamp");
    check("key.toml", &shipped.replace("key = \"device_id\"", "key = \"device\""), "key =", "event.key: \"device\" is not a declared field");
    check("index.toml", &shipped.replace("indexes = [\"device_id\", \"site\"]", "indexes = [\"device_id\", \"room\"]"), "indexes =", "room not declared");
    // A field the generator does not draw is named with the script.
    let path = dir.path().join("undrawn.toml");
    std::fs::write(&path, shipped.replace("battery = { type = \"int\", optional = true", "pressure = \"float\"\nbattery = { type = \"int\", optional = true")).unwrap();
    let (ok, _, err) = validate(&path);
    assert!(!ok && err.contains("generator.rhai") && err.contains("`pressure` is a required field of [event] but the script does not draw it"), "{err}");
}
