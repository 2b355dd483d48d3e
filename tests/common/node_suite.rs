//! Running one realtime-js test file (tests/clients/node/test/<file>) with `node --test`
//! against hubs the caller started: `npm ci` first if node_modules is incomplete, the
//! suite's output printed, and the test failed unless the suite passed and ran tests.
//! A missing `node` or `npm` is a failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// Longest one suite may run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node")
}

fn ensure_node_modules() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        for tool in ["node", "npm"] {
            let ok = std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                return Err(format!(
                    "`{tool}` is not available: install Node.js 20+ and npm (.ci/run does this)"
                ));
            }
        }
        // npm writes this file last, so its presence means a finished install.
        if node_dir().join("node_modules/.package-lock.json").exists() {
            return Ok(());
        }
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(node_dir())
            .output()
            .map_err(|e| format!("npm ci: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "npm ci failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Runs `test/<file>` with `env` and fails the test unless it passes.
pub async fn run_node_file(file: &str, env: &[(&str, String)]) {
    tokio::task::spawn_blocking(ensure_node_modules)
        .await
        .expect("npm setup panicked");
    let mut cmd = tokio::process::Command::new("node");
    cmd.args([
        "--test",
        "--test-force-exit",
        "--test-reporter=spec",
        &format!("test/{file}"),
    ])
    .current_dir(node_dir())
    .env("NO_COLOR", "1")
    .env("FORCE_COLOR", "0")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start node");
    let out = tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{file} did not finish within {SUITE_TIMEOUT:?}"))
        .expect("wait for node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("===== {file} stdout =====\n{stdout}\n===== stderr =====\n{stderr}");
    assert!(
        out.status.success(),
        "{file} failed ({}); its output is above",
        out.status
    );
    let ran = stdout.lines().any(|l| {
        l.trim()
            .strip_prefix("ℹ tests ")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .is_some_and(|n| n > 0)
    });
    assert!(ran, "{file} ran no test; its output is above");
}
