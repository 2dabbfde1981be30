//! `runner validate` reports bad files with their file and line, and accepts the shipped one.

mod common;

fn validate(path: &std::path::Path) -> (bool, String, String) {
    let out = common::runner().arg("validate").arg(path).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
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
    let line = text
        .lines()
        .position(|l| l.starts_with("batch_sise"))
        .unwrap()
        + 1;
    std::fs::write(&bad_key, &text).unwrap();
    let (ok, _, err) = validate(&bad_key);
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:{line}:", bad_key.display())),
        "{err}"
    );
    assert!(err.contains("unknown field `batch_sise`"), "{err}");

    // A syntax error in the script: named with the script's file and line.
    let bad_script = dir.path().join("gen.rhai");
    std::fs::write(&bad_script, "// line 1\nlet x = ;\n#{}").unwrap();
    let pipeline = dir.path().join("bad_script.toml");
    std::fs::write(
        &pipeline,
        shipped.replace("../scripts/generator.rhai", "gen.rhai"),
    )
    .unwrap();
    let (ok, _, err) = validate(&pipeline);
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:2:", bad_script.display())),
        "{err}"
    );
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
    assert!(
        copied.contains(&"templates") && copied.contains(&"scripts"),
        "{copied:?}"
    );
    let image = tempfile::tempdir().unwrap();
    for path in &copied {
        copy_tree(&root.join(path), &image.path().join(path));
    }

    let compose = std::fs::read_to_string(root.join("docker/docker-compose.yml")).unwrap();
    let env = runner_environment(&compose);
    assert!(
        env.iter()
            .any(|(k, v)| k == "DASHBOARD_LISTEN" && v.starts_with("0.0.0.0:")),
        "the dashboard listens beyond the container's loopback: {env:?}"
    );
    let pipeline = std::fs::read_to_string(root.join("pipelines/interactions.toml")).unwrap();
    for (name, _) in &env {
        assert!(
            pipeline.contains(&format!("${{{name}")),
            "compose sets {name}, which the pipeline file does not read"
        );
    }
    let out = common::runner()
        .args(["validate", "pipelines/interactions.toml"])
        .current_dir(image.path())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `environment:` entries of the `runner` service.
fn runner_environment(compose: &str) -> Vec<(String, String)> {
    let service = compose
        .split("\n  runner:\n")
        .nth(1)
        .expect("a runner service");
    let block = service
        .split("\n    environment:\n")
        .nth(1)
        .expect("runner environment");
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
    let shipped =
        std::fs::read_to_string(common::repo_root().join("pipelines/sensors.toml")).unwrap();
    let scripts = common::repo_root().join("scripts");
    let shipped = shipped
        .replace("../scripts", scripts.to_str().unwrap())
        .replace(
            "../templates",
            common::repo_root().join("templates").to_str().unwrap(),
        );
    let check = |name: &str, text: &str, line_of: &str, wanted: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let line = text.lines().position(|l| l.starts_with(line_of)).unwrap() + 1;
        let (ok, _, err) = validate(&path);
        assert!(!ok, "{name}");
        assert!(
            err.contains(&format!("{}:{line}:", path.display())) && err.contains(wanted),
            "{name}: {err}"
        );
    };
    check(
        "type.toml",
        &shipped.replace(
            "temperature = { type = \"float\"",
            "temperature = { type = \"flaot\"",
        ),
        "temperature =",
        "unknown field type \"flaot\"",
    );
    check(
        "id.toml",
        &shipped.replace("id = \"reading_id\"", "id = \"reading\""),
        "id =",
        "event.id: \"reading\" is not a declared field",
    );
    check(
        "time.toml",
        &shipped.replace("time = \"ts\"", "time = \"site\""),
        "time =",
        "must be a required timestamp",
    );
    check(
        "key.toml",
        &shipped.replace("key = \"device_id\"", "key = \"device\""),
        "key =",
        "event.key: \"device\" is not a declared field",
    );
    check(
        "index.toml",
        &shipped.replace(
            "indexes = [\"device_id\", \"site\"]",
            "indexes = [\"device_id\", \"room\"]",
        ),
        "indexes =",
        "room not declared",
    );
    // A field the generator does not draw is named with the script.
    let path = dir.path().join("undrawn.toml");
    std::fs::write(
        &path,
        shipped.replace(
            "battery = { type = \"int\", optional = true",
            "pressure = \"float\"\nbattery = { type = \"int\", optional = true",
        ),
    )
    .unwrap();
    let (ok, _, err) = validate(&path);
    assert!(
        !ok && err.contains("generator.rhai")
            && err.contains(
                "`pressure` is a required field of [event] but the script does not draw it"
            ),
        "{err}"
    );
}

/// The Kubernetes manifests: the ConfigMap holds exactly the repository's pipeline files, scripts
/// and templates (regenerated by `deploy/kubernetes/make-configmap.sh`, so they cannot drift),
/// every Deployment mounts each of them at its repository path, and laid out as the kubelet lays
/// out a ConfigMap volume (`..<version>/` holding the files, `..data` pointing at it, each top
/// folder a symlink through `..data`), the shipped pipelines validate there with the environment
/// the Deployments set, every variable of which the runner reads.
#[test]
fn kubernetes_configmap_validates() {
    use serde_yaml_ng::Value;
    let root = common::repo_root();
    let dir = root.join("deploy/kubernetes");
    let configmap: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("configmap.yaml")).unwrap())
            .unwrap();
    let data = configmap["data"]
        .as_mapping()
        .expect("the ConfigMap has data");
    let manifests: Vec<Value> = serde_yaml_ng::Deserializer::from_str(
        &std::fs::read_to_string(dir.join("runner.yaml")).unwrap(),
    )
    .map(|d| serde::Deserialize::deserialize(d).unwrap())
    .collect();

    // The ConfigMap is the repository's files, each byte for byte.
    let mut expected = Vec::new();
    for top in ["pipelines", "scripts", "templates"] {
        collect_files(&root, &root.join(top), &mut expected);
    }
    expected.retain(|p| !p.ends_with(".sh") && !p.ends_with(".test.toml"));
    expected.sort();
    let mut keys: Vec<String> = data
        .keys()
        .map(|k| k.as_str().unwrap().replace("__", "/"))
        .collect();
    keys.sort();
    assert_eq!(keys, expected, "the ConfigMap holds every pipeline file, script and template: run deploy/kubernetes/make-configmap.sh");
    for path in &expected {
        let held = data[path.replace('/', "__").as_str()].as_str().unwrap();
        assert!(held == std::fs::read_to_string(root.join(path)).unwrap(), "{path} in the ConfigMap differs from the repository's: run deploy/kubernetes/make-configmap.sh");
    }

    // The pod's view: the kubelet's layout of the volume, at the mount path.
    let deployments: Vec<&Value> = manifests
        .iter()
        .filter(|m| m["kind"] == "Deployment")
        .collect();
    assert_eq!(
        deployments.len(),
        2,
        "a consumer and a generator Deployment"
    );
    let settings = manifests
        .iter()
        .find(|m| m["kind"] == "ConfigMap" && m["metadata"]["name"] == "runner-settings")
        .expect("runner-settings");
    let env: Vec<(String, String)> = settings["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pipeline_text = std::fs::read_to_string(common::shipped_pipeline()).unwrap();
    let run_help = String::from_utf8_lossy(
        &common::runner()
            .args(["run", "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    for (name, _) in &env {
        assert!(
            pipeline_text.contains(&format!("${{{name}"))
                || run_help.contains(&format!("env: {name}=")),
            "the Deployments set {name}, which the runner does not read"
        );
    }
    assert!(env
        .iter()
        .any(|(k, v)| k == "DASHBOARD_LISTEN" && v.starts_with("0.0.0.0:")));
    for d in deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let spec = &d["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let mount = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "pipeline")
            .expect("the pipeline volume is mounted");
        let volume = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "pipeline")
            .unwrap();
        assert_eq!(volume["configMap"]["name"], "runner-pipeline");
        let items: Vec<(String, String)> = volume["configMap"]["items"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["key"].as_str().unwrap().to_string(),
                    i["path"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            items.len(),
            expected.len(),
            "{name} mounts every file of the ConfigMap"
        );

        let pod = tempfile::tempdir().unwrap();
        let mount_path = pod
            .path()
            .join(mount["mountPath"].as_str().unwrap().trim_start_matches('/'));
        let version = mount_path.join("..2026_12_02_00_00_00.000000001");
        for (key, path) in &items {
            let file = version.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(
                &file,
                data[key.as_str()]
                    .as_str()
                    .expect("every item names a key of the ConfigMap"),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(version.file_name().unwrap(), mount_path.join("..data"))
            .unwrap();
        for top in ["pipelines", "scripts", "templates"] {
            std::os::unix::fs::symlink(format!("..data/{top}"), mount_path.join(top)).unwrap();
        }
        let args: Vec<&str> = container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], "run");
        let file = pod.path().join(args[1].trim_start_matches('/'));
        assert!(
            file.starts_with(&mount_path),
            "{name} runs a pipeline from the ConfigMap: {args:?}"
        );
        let components = args
            .iter()
            .position(|a| *a == "--components")
            .map(|i| args[i + 1])
            .unwrap();
        for path in [file, mount_path.join("pipelines/sensors.toml")] {
            let out = common::runner()
                .arg("validate")
                .arg(&path)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "ok",
                "{name} ({components}): {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Every file under `dir`, as a path relative to `root` with `/` separators.
fn collect_files(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            collect_files(root, &path, out);
        } else {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
}
