//! The dashboard under load, a small version of `runner bench --only dashboard`: a runner process
//! with no viewer, then with many live viewers and steady API requests. Alone in its test
//! binary, so no other test shares the machine while it measures.

mod common;

use runner::cli::bench::{load_check, LoadSpec};
use std::path::Path;
use std::time::Duration;

/// The shipped pipeline with 10 s windows (so they fill within the warm-up), written to `dir`
/// with its scripts, lookup tables and templates named by absolute path.
fn short_window_pipeline(dir: &Path) -> std::path::PathBuf {
    let root = common::repo_root();
    let text = std::fs::read_to_string(common::shipped_pipeline()).unwrap();
    let text = text
        .replace("\"../scripts/", &format!("\"{}/scripts/", root.display()))
        .replace("\"../lookups/", &format!("\"{}/lookups/", root.display()))
        .replace(
            "\"../templates\"",
            &format!("\"{}/templates\"", root.display()),
        )
        .replace("window = \"60s\"", "window = \"10s\"");
    assert!(
        text.matches("window = \"10s\"").count() >= 10,
        "the windows were not shortened"
    );
    let file = dir.join("interactions.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_viewers_share_one_render_and_do_not_slow_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = short_window_pipeline(dir.path());
    // 20 s warm-up: a 10 s window, 5 s lateness and a 5 s slide fill the aggregator's panes.
    let spec = LoadSpec {
        rate: 2_000.0,
        clients: 50,
        api_per_s: 10.0,
        phase: Duration::from_secs(15),
        warmup: Duration::from_secs(20),
    };
    let o = load_check(Path::new(env!("CARGO_BIN_EXE_runner")), &pipeline, &spec)
        .await
        .unwrap();
    println!("{o:#?}");
    assert!(
        o.stored_loaded >= 0.9 * o.stored_idle,
        "stored {:.0}/s with viewers against {:.0}/s without",
        o.stored_loaded,
        o.stored_idle
    );
    assert!(
        o.api_loaded_ms.1 <= 100.0,
        "API p99 {:.1} ms with {} viewers",
        o.api_loaded_ms.1,
        spec.clients
    );
    assert_eq!(o.api_failures, 0, "every API request answered 200");
    assert_eq!(o.clients_ok, spec.clients, "every viewer stayed connected");
    // The shipped refresh is 2 s: a 15 s window holds at least 6 whole refreshes.
    assert!(
        o.frames_min >= 6,
        "a viewer got only {} refreshes in 15 s",
        o.frames_min
    );
    assert_eq!(
        o.frames_missed, 0,
        "viewers missed refreshes (gaps in the sequence ids)"
    );
    assert_eq!(o.feeds, 1.0, "all viewers of one view share one render");
    assert!(
        o.rss_end_mb <= o.rss_start_mb * 1.15 + 10.0,
        "RSS grew under load: {:.0} MB to {:.0} MB",
        o.rss_start_mb,
        o.rss_end_mb
    );
}
