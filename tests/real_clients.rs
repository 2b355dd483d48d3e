//! Real-client conformance: the shipped Supabase clients (`@supabase/realtime-js`,
//! `@supabase/supabase-js` under Node, the Python `realtime` package) run their own test
//! suites in `tests/clients/` against a hub started in-process on port 0.
//!
//! Each test starts its own hub, runs one suite as a subprocess with `SWITCHBOARD_URL` and
//! `SWITCHBOARD_JWT_SECRET` set, and asserts its exit status; on failure it prints the
//! suite's output, which includes the raw frames of every failing client test. Suites that
//! write rows get a fresh database (migrated, plus `tests/clients/fixture.sql`) whose URL
//! is passed as `SWITCHBOARD_DATABASE_URL`; the others run the hub without a database. A missing
//! `node`, `npm` or `python3` is a failure, never a skip. Missing `node_modules` or Python
//! venv are installed first (once per test binary).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use switchboard::config::Config;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

mod common;

/// Longest one client suite may run before it is killed and the test fails.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the hub may take to stop after the suite is done.
const HUB_STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A hub serving on an ephemeral port until `stop`.
struct Hub {
    url: String,
    jwt_secret: String,
    database_url: Option<String>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<String>,
}

/// A fresh database with the hub's migrations and the client fixture tables.
async fn fixture_database() -> String {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client)
        .await
        .expect("hub migrations apply");
    client
        .batch_execute(include_str!("clients/fixture.sql"))
        .await
        .expect("tests/clients/fixture.sql applies");
    db.url
}

impl Hub {
    async fn start(database_url: Option<String>) -> Hub {
        let jwt_secret = format!("conformance-{}", uuid::Uuid::new_v4());
        let mut config = Config::for_tests(&jwt_secret);
        config.database_url = database_url.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let run = switchboard::run(config, listener, shutdown.clone());
        let task = tokio::spawn(async move { format!("{:?}", run.await) });
        Hub {
            url: format!("http://{addr}/realtime/v1"),
            jwt_secret,
            database_url,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let outcome = tokio::time::timeout(HUB_STOP_TIMEOUT, self.task)
            .await
            .unwrap_or_else(|_| panic!("hub did not stop within {HUB_STOP_TIMEOUT:?}"))
            .expect("hub task panicked");
        assert!(outcome.starts_with("Ok"), "hub ended with {outcome}");
    }
}

/// A setup command run in `dir`.
fn tool(program: &str, dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.current_dir(dir);
    cmd
}

fn require_tool(program: &str, hint: &str) {
    match std::process::Command::new(program)
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{program} --version` failed ({}): {hint}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("`{program}` is not available ({e}): {hint}"),
    }
}

fn run_setup(mut cmd: std::process::Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `npm ci` in tests/clients/node unless node_modules is complete; once per binary.
fn ensure_node_modules() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        require_tool("node", "install Node.js 20 or newer (.ci/run does this)");
        require_tool("npm", "install npm (.ci/run does this)");
        let dir = clients_dir().join("node");
        // npm writes this file last, so its presence means a finished install.
        if dir.join("node_modules/.package-lock.json").exists() {
            return Ok(());
        }
        let mut cmd = tool("npm", &dir);
        cmd.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
        run_setup(cmd, "npm ci in tests/clients/node")
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Creates tests/clients/python/.venv and installs requirements.txt unless done; once
/// per binary. A marker holding the requirements text records a finished install.
fn ensure_python_venv() -> PathBuf {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = clients_dir().join("python");
    let venv = dir.join(".venv");
    let python = venv.join("bin/python");
    let result = DONE.get_or_init(|| {
        require_tool(
            "python3",
            "install Python 3.10+ with venv (.ci/run does this)",
        );
        let requirements = std::fs::read_to_string(dir.join("requirements.txt"))
            .map_err(|e| format!("read requirements.txt: {e}"))?;
        let marker = venv.join(".installed-requirements");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(requirements.as_str()) {
            return Ok(());
        }
        if !python.exists() {
            let mut cmd = tool("python3", &dir);
            cmd.args(["-m", "venv", ".venv"]);
            run_setup(cmd, "python3 -m venv tests/clients/python/.venv")?;
        }
        let mut cmd = tool(python.to_str().expect("utf-8 path"), &dir);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
            "requirements.txt",
        ]);
        run_setup(cmd, "pip install -r tests/clients/python/requirements.txt")?;
        std::fs::write(&marker, requirements).map_err(|e| format!("write marker: {e}"))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    python
}

/// Runs one client suite against a fresh hub and fails the test unless it exits 0.
async fn run_suite(name: &str, hub: Hub, dir: PathBuf, program: PathBuf, args: &[&str]) {
    let mut cmd = Command::new(&program);
    if let Some(url) = &hub.database_url {
        cmd.env("SWITCHBOARD_DATABASE_URL", url);
    }
    cmd.args(args)
        .current_dir(&dir)
        .env("SWITCHBOARD_URL", &hub.url)
        .env("SWITCHBOARD_JWT_SECRET", &hub.jwt_secret)
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {}: {e}", program.display()));
    let out = match tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("{name}: waiting for the suite: {e}")),
        Err(_) => panic!("{name}: suite did not finish within {SUITE_TIMEOUT:?}"),
    };
    hub.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by libtest on failure or with --nocapture.
    println!("===== {name} stdout =====\n{stdout}\n===== stderr =====\n{stderr}");
    assert!(
        out.status.success(),
        "{name} failed ({}) against the hub; its output is above",
        out.status
    );
    assert!(
        ran_some_tests(&stdout),
        "{name} ran no test; its output is above"
    );
}

/// Whether a suite's summary shows at least one executed test (node's spec reporter
/// prints `ℹ tests N`, pytest `N passed`).
fn ran_some_tests(stdout: &str) -> bool {
    stdout.lines().any(|line| {
        let line = line.trim();
        let count = line.strip_prefix("ℹ tests ").or_else(|| {
            line.split(" passed")
                .next()
                .filter(|_| line.contains(" passed"))
        });
        count
            .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u32>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// One node test file (tests/clients/node/test/<file>) against a fresh hub.
async fn run_node_file(file: &str, database_url: Option<String>) {
    tokio::task::spawn_blocking(ensure_node_modules)
        .await
        .expect("npm setup panicked");
    let dir = clients_dir().join("node");
    let test_file = format!("test/{file}");
    run_suite(
        &format!("realtime-js suite {file}"),
        Hub::start(database_url).await,
        dir,
        PathBuf::from("node"),
        &[
            "--test",
            "--test-force-exit",
            "--test-reporter=spec",
            &test_file,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_connects_heartbeats_joins_and_leaves() {
    run_node_file("connect.test.mjs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_broadcast_acks_echoes_and_fans_out_text_and_binary() {
    run_node_file("broadcast.test.mjs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_presence_tracks_untracks_and_sees_disconnects() {
    run_node_file("presence.test.mjs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_token_refresh_and_expiry_behave_like_supabase() {
    run_node_file("auth.test.mjs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_postgres_changes_join_binds_server_ids() {
    run_node_file("postgres_changes.test.mjs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_rest_broadcast_reaches_subscribers() {
    run_node_file("rest.test.mjs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_channels_broadcast_and_presence_work() {
    run_node_file("supabase_js.test.mjs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_realtime_client_suite_passes() {
    let python = tokio::task::spawn_blocking(ensure_python_venv)
        .await
        .expect("venv setup panicked");
    run_suite(
        "python realtime suite",
        Hub::start(Some(fixture_database().await)).await,
        clients_dir().join("python"),
        python,
        &["-m", "pytest", "-q"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_receives_row_changes_with_filters_and_row_level_security() {
    let database_url = fixture_database().await;
    run_node_file("postgres_rows.test.mjs", Some(database_url)).await;
}

#[test]
fn every_node_test_file_has_a_rust_test() {
    let listed = [
        "auth.test.mjs",
        "broadcast.test.mjs",
        "connect.test.mjs",
        "postgres_changes.test.mjs",
        "postgres_rows.test.mjs",
        "presence.test.mjs",
        "rest.test.mjs",
        "supabase_js.test.mjs",
    ];
    let mut found: Vec<String> = std::fs::read_dir(clients_dir().join("node/test"))
        .expect("tests/clients/node/test exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".test.mjs"))
        .collect();
    found.sort();
    assert_eq!(
        found, listed,
        "add a #[tokio::test] for each node test file"
    );
}
