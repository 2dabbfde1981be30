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
        copied.contains(&"pipelines") && copied.contains(&"scripts"),
        "{copied:?}"
    );
    assert!(
        !copied.contains(&"templates"),
        "the templates are built into the binary: {copied:?}"
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

/// The Kubernetes manifests: the ConfigMap holds exactly the repository's pipeline files and scripts
/// (the templates are built into the binary; regenerated by `deploy/kubernetes/make-configmap.sh`, so they cannot drift),
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
    for top in ["pipelines", "scripts", "schemas", "lookups"] {
        collect_files(&root, &root.join(top), &mut expected);
    }
    expected.retain(|p| !p.ends_with(".sh") && !p.ends_with(".test.toml"));
    expected.sort();
    let mut keys: Vec<String> = data
        .keys()
        .map(|k| k.as_str().unwrap().replace("__", "/"))
        .collect();
    keys.sort();
    assert_eq!(keys, expected, "the ConfigMap holds every pipeline file, script and schema: run deploy/kubernetes/make-configmap.sh");
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
        for top in ["pipelines", "scripts", "schemas", "lookups"] {
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

/// A minimal pipeline needs only its name, record, generator and metrics: no Kafka topic,
/// consumer group or MongoDB database it does not use.
#[test]
fn a_minimal_pipeline_on_the_embedded_default_validates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gen.rhai"),
        "#{ user: zipf(\"u\", 10, 1.0), express: chance(0.2) }",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("express.rhai"),
        "#{ filter: field_is(\"express\", true) }",
    )
    .unwrap();
    let path = dir.path().join("orders.toml");
    std::fs::write(
        &path,
        "name = \"orders\"\n[event]\nfields = { id = \"string\", user = \"string\", express = \"bool\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"\n\
         [generator]\nscript = \"gen.rhai\"\n[[metric]]\nname = \"express\"\nscript = \"express.rhai\"\nreducer = \"count\"\nwindow = \"10s\"\n",
    )
    .unwrap();
    let (ok, out, err) = validate(&path);
    assert!(ok && out.trim() == "ok", "{err}");
    let p = runner::config::Pipeline::load_with_env(&path, |_| None).unwrap();
    let c = &p.config;
    assert_eq!(
        (
            c.kafka.bootstrap_servers.as_str(),
            c.kafka.topic.as_str(),
            c.kafka.consumer_group.as_str()
        ),
        ("embedded", "orders", "orders-consumer")
    );
    assert_eq!(
        (
            c.mongodb.uri.as_str(),
            c.mongodb.database.as_str(),
            c.mongodb.raw_collection.as_str()
        ),
        ("embedded", "orders", "orders")
    );
    let p = runner::config::Pipeline::load_with_env(&path, |n| {
        (n == "KAFKA_BOOTSTRAP_SERVERS").then(|| "h:9092".to_string())
    })
    .unwrap();
    assert_eq!(
        p.config.kafka.bootstrap_servers, "h:9092",
        "the environment fills a key the file leaves out"
    );
}

/// Every missing or wrong key is listed at once, each with its line, not one per run.
#[test]
fn validate_lists_every_missing_or_wrong_key_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gen.rhai"),
        "#{ user: zipf(\"u\", 10, 1.0) }",
    )
    .unwrap();
    let path = dir.path().join("p.toml");
    let text = "name = \"p\"\n[event]\nfields = { id = \"string\", user = \"string\", t = \"timestamp\" }\nid = \"id\"\n\
                [kafka]\npartitions = \"three\"\n[generator]\nscript = \"gen.rhai\"\nrat = 5\n\
                [[metric]]\nname = \"a\"\nscript = \"gen.rhai\"\n\
                [dashboard]\nrefresh = 5\n";
    std::fs::write(&path, text).unwrap();
    let (ok, _, err) = validate(&path);
    assert!(!ok);
    let line_of = |prefix: &str| text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1;
    let shown = path.display().to_string();
    for (line, what) in [
        (line_of("partitions"), "partitions"),
        (line_of("rat "), "unknown field `rat`"),
        (line_of("refresh"), "refresh"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{shown}:{line}:")) && l.contains(what)),
            "{what} at line {line} in:\n{err}"
        );
    }
    // A missing key is placed at its table.
    for what in ["missing field `time`", "missing field `reducer`"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("error: {shown}:")) && l.contains(what)),
            "{what} in:\n{err}"
        );
    }
    assert_eq!(
        err.lines().count(),
        5,
        "each problem once, no consequences of another:\n{err}"
    );
}

/// `field_is` compares with the field's declared type: a string against an int field is a load
/// error naming the script's file and line.
#[test]
fn a_selector_value_of_the_wrong_type_is_a_load_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gen.rhai"), "#{ items: uniform_int(1, 5) }").unwrap();
    std::fs::write(
        dir.path().join("m.rhai"),
        "// items\n#{\n  filter: field_is(\"items\", \"3\"),\n}\n",
    )
    .unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "name = \"p\"\n[event]\nfields = { id = \"string\", items = \"int\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"\n\
         [generator]\nscript = \"gen.rhai\"\n[[metric]]\nname = \"m\"\nscript = \"m.rhai\"\nreducer = \"count\"\nwindow = \"10s\"\n",
    )
    .unwrap();
    let (ok, _, err) = validate(&path);
    assert!(!ok);
    let script = dir.path().join("m.rhai");
    assert!(
        err.contains(&format!("{}:3:", script.display()))
            && err.contains("`items`")
            && err.contains("int field"),
        "{err}"
    );
}

/// `[generator]` is only for pipelines that generate: one without it validates, and run on the
/// embedded queue (which carries only what the process generates) it says what to set.
#[test]
fn a_pipeline_without_a_generator_validates_and_run_embedded_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("count.rhai"), "#{}").unwrap();
    let path = dir.path().join("consume.toml");
    std::fs::write(
        &path,
        "name = \"consume\"\n[event]\nfields = { id = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"\n\
         [[metric]]\nname = \"n\"\nscript = \"count.rhai\"\nreducer = \"count\"\n",
    )
    .unwrap();
    let (ok, out, err) = validate(&path);
    assert!(ok && out.trim() == "ok", "{err}");
    let run = common::runner()
        .current_dir(dir.path())
        .arg("run")
        .arg(&path)
        .args(["--for", "5s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success()
            && err.contains("no [generator] script")
            && err.contains("kafka.bootstrap_servers"),
        "{err}"
    );
    let generate = common::runner()
        .arg("generate")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !generate.status.success()
            && String::from_utf8_lossy(&generate.stderr).contains("[generator] script")
    );
}
