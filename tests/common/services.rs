//! Service processes of a test's own (a broker or a database it may kill, or configure in ways
//! that would disturb other tests), started from the binaries scripts/services.sh installs.

use std::process::{Child, Command, Stdio};

/// A service process of our own (so killing it does not disturb other tests), restartable on
/// the same port and data.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Service {
    pub async fn tansu() -> Service {
        let mut s = Service {
            name: "tansu",
            port: super::free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.start().await;
        s
    }

    pub async fn secantus() -> Service {
        let mut s = Service {
            name: "secantusd-rs",
            port: super::free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.start().await;
        s
    }

    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(self.name);
        match self.name {
            "tansu" => cmd.current_dir(self.dir.path()).args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ]),
            // The runner asks for journaled writes (j:true). SecantusDB 0.5.3 accepts j:true but
            // flushes its log for it only with --sync-on-commit (mongod flushes for j:true
            // itself); without the flag a SIGKILL lost up to 100 acknowledged events in 5 of 20 runs.
            _ => cmd
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &self.port.to_string(),
                    "--sync-on-commit",
                    "--storage-path",
                ])
                .arg(self.dir.path().join("data")),
        };
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} ({e})", self.name)),
        );
        super::wait_for_port(self.port).await;
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL: no shutdown code runs, exactly like a crash or an OOM kill.
pub fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGTERM, then waits: a graceful stop (what was read is stored and committed) within `limit`.
pub fn terminate(child: &mut Child, limit: std::time::Duration) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot signal the runner");
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < limit,
            "the runner did not stop within {limit:?} of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
