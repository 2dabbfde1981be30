//! The runner outside its repository, as a new user meets it: the binary installed into a prefix
//! of its own, a sample of their data in an empty folder, `runner init`, `validate`, `run` on
//! the embedded default with the dashboard (templates built in), and `runner metrics`; the
//! pipeline's folder is left as it was (it may be read-only: the data lands where the runner
//! runs).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The built binary put into `<prefix>/bin`, as `cargo install --root <prefix>` lays it out:
/// hard-linked where it can be, because a copy is a file open for writing, and a test on
/// another thread that forks meanwhile holds it open, so running it fails with "Text file busy"
/// (ETXTBSY; seen in CI). Copied, and retried while busy, across file systems.
fn install(prefix: &Path) -> PathBuf {
    let bin = prefix.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let installed = bin.join("runner");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_runner"), &installed).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_runner"), &installed).unwrap();
        for _ in 0..50 {
            match Command::new(&installed).arg("--version").output() {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => break,
            }
        }
    }
    installed
}

/// The installed runner, run in `cwd` with nothing of the repository's environment.
fn runner(bin: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(cwd);
    cmd
}

fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn set_read_only(dir: &Path, read_only: bool) {
    for (path, _) in listing(dir) {
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        perms.set_readonly(read_only);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    for d in [dir.to_path_buf(), dir.join("orders")] {
        let mut perms = std::fs::metadata(&d).unwrap().permissions();
        perms.set_readonly(read_only);
        std::fs::set_permissions(&d, perms).unwrap();
    }
}

#[test]
fn an_installed_runner_serves_a_pipeline_from_an_empty_folder() {
    let prefix = tempfile::tempdir().unwrap();
    let bin = install(prefix.path());
    let project = tempfile::tempdir().unwrap();
    let sample = project.path().join("sample.jsonl");
    let mut f = std::fs::File::create(&sample).unwrap();
    for i in 0..400 {
        let coupon = if i % 10 < 3 {
            format!(r#","coupon":"SAVE{}""#, i % 3)
        } else {
            String::new()
        };
        writeln!(
            f,
            r#"{{"order_id":"o-{i}","customer":"c{}","amount":{:.2},"express":{},"items":{},"created_at":"2026-11-30T10:00:{:02}Z"{coupon}}}"#,
            i % 37,
            3.5 + (i as f64 * 2.17) % 90.0,
            i % 5 == 0,
            1 + i % 4,
            i % 60
        )
        .unwrap();
    }
    drop(f);

    // init and validate in the user's folder, with the installed binary.
    let init = runner(&bin, project.path())
        .args(["init", "orders", "--from-file", "sample.jsonl"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}{}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr)
    );
    let validate = runner(&bin, project.path())
        .args(["validate", "orders.toml"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&validate.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    std::fs::remove_file(&sample).unwrap();

    // Run from another folder with the pipeline's folder read-only: the data lands where the
    // runner runs, nothing is written beside the pipeline.
    let before = listing(project.path());
    set_read_only(project.path(), true);
    let elsewhere = tempfile::tempdir().unwrap();
    let pipeline = project.path().join("orders.toml");
    let port = common::free_port();
    let mut run = runner(&bin, elsewhere.path())
        .arg("run")
        .arg(&pipeline)
        .args([
            "--for",
            "12s",
            "--dashboard-listen",
            &format!("127.0.0.1:{port}"),
            "--progress-every",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let page = loop {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the dashboard never came up"
        );
        if run.try_wait().unwrap().is_some() {
            let out = run.wait_with_output().unwrap();
            panic!(
                "the runner exited: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            std::thread::sleep(Duration::from_secs(4));
            break common::get(port, "/", &[]);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, api) = common::get(port, "/api/metrics", &[]);
    let out = run.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    set_read_only(project.path(), false);
    assert!(out.status.success(), "{log}");
    assert_eq!(page.0, 200, "{}", page.1);
    assert!(
        page.1.contains("records_per_minute") && page.1.contains("data-panel=\"headline\""),
        "the built-in page with the metric: {}",
        page.1
    );
    assert!(api.contains("records_per_minute"), "{api}");
    assert_eq!(
        listing(project.path()),
        before,
        "the pipeline's folder is left as it was"
    );
    assert!(
        elsewhere.path().join("data/orders").is_dir(),
        "the embedded store is under the working directory"
    );

    // The metric reads back from the store the run left.
    let metrics = runner(&bin, elsewhere.path())
        .arg("metrics")
        .arg(&pipeline)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&metrics.stderr)
    );
    let counted: u64 = table
        .lines()
        .find(|l| l.starts_with("records_per_minute"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count in\n{table}"));
    assert!(counted > 100, "{table}");
}

/// A dashboard that cannot come up is an error at start (non-zero exit, naming the key), not a
/// pipeline that runs on without its page and says so only when it exits.
#[test]
fn a_taken_dashboard_port_fails_the_start_at_once() {
    let prefix = tempfile::tempdir().unwrap();
    let bin = install(prefix.path());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gen.rhai"),
        "#{ user: zipf(\"u\", 10, 1.0) }",
    )
    .unwrap();
    std::fs::write(dir.path().join("count.rhai"), "#{}").unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        "name = \"p\"\n[event]\nfields = { id = \"string\", user = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"\n\
         [generator]\nscript = \"gen.rhai\"\n[[metric]]\nname = \"n\"\nscript = \"count.rhai\"\nreducer = \"count\"\nwindow = \"10s\"\n",
    )
    .unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let out = runner(&bin, dir.path())
        .args([
            "run",
            "p.toml",
            "--for",
            "60s",
            "--dashboard-listen",
            &holder.local_addr().unwrap().to_string(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it failed at once, not at the end of --for"
    );
    assert!(
        err.contains("dashboard.listen") && err.contains(&holder.local_addr().unwrap().to_string()),
        "{err}"
    );
    assert!(!err.contains("progress"), "nothing ran: {err}");
}
