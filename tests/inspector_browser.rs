//! Real browsers: headless Chromium (Debian's `chromium` package, or
//! `SWITCHBOARD_CHROMIUM`) driven through playwright-core against a hub started here on
//! the client fixture database. `tests/clients/node/browser/inspector.test.mjs` uses the
//! inspector page; `browser/portal.test.mjs` is a customer portal on another origin using
//! supabase-js's browser bundle.
//!
//! A missing `node`, `npm` or Chromium is a failure, never a skip; no browser is ever
//! downloaded. With `INSPECTOR_SCREENSHOT=<path>` (relative to the repository) the suite
//! also saves a screenshot of the page with data on it (how `docs/inspector.png` was made).

use std::process::Stdio;
use std::time::Duration;

use switchboard::config::Config;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

mod common;

use common::clients::{ensure_node_modules, require_tool};

const SUITE_TIMEOUT: Duration = Duration::from_secs(300);
const ADMIN_SECRET: &str = "inspector-browser-admin-secret";
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> String {
    let path = std::env::var("SWITCHBOARD_CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.into());
    require_tool(
        &path,
        "install Debian's chromium package (apt-get install chromium; .ci/run does this) \
         or set SWITCHBOARD_CHROMIUM",
    );
    path
}

/// Whether node's spec reporter shows at least one passed test.
fn ran_some_tests(stdout: &str) -> bool {
    stdout.lines().any(|l| {
        l.trim()
            .strip_prefix("ℹ pass ")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .is_some_and(|n| n > 0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_works_in_headless_chromium() {
    run_browser_suite("browser/inspector.test.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_works_in_headless_chromium_from_a_portal_on_another_origin() {
    run_browser_suite("browser/portal.test.mjs").await;
}

/// Runs one browser suite (a file under tests/clients/node) against a fresh hub.
async fn run_browser_suite(file: &str) {
    let chromium = chromium();
    let node_dir = tokio::task::spawn_blocking(ensure_node_modules)
        .await
        .expect("npm setup");

    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.expect("migrations");
    client
        .batch_execute(include_str!("clients/fixture.sql"))
        .await
        .expect("tests/clients/fixture.sql applies");

    let jwt_secret = format!("inspector-{}", uuid::Uuid::new_v4());
    let mut config = Config::for_tests(&jwt_secret);
    config.database_url = Some(db.url.clone());
    config.capture_poll = Duration::from_millis(200);
    config.admin_secret = Some(ADMIN_SECRET.into());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let hub = tokio::spawn(switchboard::run(config, listener, shutdown.clone()));

    let mut cmd = Command::new("node");
    if let Ok(path) = std::env::var("INSPECTOR_SCREENSHOT") {
        // Relative to the repository, not to the node suite's folder.
        cmd.env(
            "INSPECTOR_SCREENSHOT",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path),
        );
    }
    let child = cmd
        .args(["--test", "--test-force-exit", "--test-reporter=spec", file])
        .current_dir(&node_dir)
        .env("SWITCHBOARD_HTTP_URL", format!("http://{addr}"))
        .env("SWITCHBOARD_JWT_SECRET", &jwt_secret)
        .env("SWITCHBOARD_DATABASE_URL", &db.url)
        .env("SWITCHBOARD_CHROMIUM", &chromium)
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let out = tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output())
        .await
        .expect("the browser suite finished in time")
        .expect("the browser suite ran");

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(15), hub)
        .await
        .expect("hub stops within 15 s")
        .expect("hub task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("===== {file} stdout =====\n{stdout}\n===== stderr =====\n{stderr}");
    assert!(stopped.is_ok(), "hub ended with {stopped:?}");
    assert!(
        out.status.success(),
        "the browser suite failed ({}); output above",
        out.status
    );
    assert!(
        ran_some_tests(&stdout),
        "the browser suite ran no test; output above"
    );
}
