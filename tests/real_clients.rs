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

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use switchboard::config::Config;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

mod common;

use common::clients::{clients_dir, ensure_node_modules, ensure_python_venv, require_tool};

/// Longest one client suite may run before it is killed and the test fails.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the hub may take to stop after the suite is done.
const HUB_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A hub serving on an ephemeral port until `stop`.
struct Hub {
    url: String,
    jwt_secret: String,
    database_url: Option<String>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<String>,
}

/// The client fixture tables (`realtime.enable` the Switchboard way).
const FIXTURE: (&str, &str) = ("fixture.sql", include_str!("clients/fixture.sql"));
/// A project set up the Supabase way (publication, realtime.messages policies, ...).
const SUPABASE_PROJECT: (&str, &str) = (
    "supabase_project.sql",
    include_str!("clients/supabase_project.sql"),
);

/// The tables, policies and triggers of Supabase's own e2e suite (test/e2e/realtime-check.ts).
const SUPABASE_E2E: (&str, &str) = ("supabase_e2e.sql", include_str!("clients/supabase_e2e.sql"));

/// A fresh database with the hub's migrations and `fixtures` applied, in order.
async fn fixture_database(fixtures: &[(&str, &str)]) -> String {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client)
        .await
        .expect("hub migrations apply");
    for (name, sql) in fixtures {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("tests/clients/{name} applies: {e}"));
    }
    db.url
}

/// An opaque publishable key the suites' hubs accept as `anon` (`api_keys`).
const PUBLISHABLE_KEY: &str = "sb_publishable_conformance_0123456789";

impl Hub {
    async fn start(database_url: Option<String>) -> Hub {
        let jwt_secret = format!("conformance-{}", uuid::Uuid::new_v4());
        let mut config = Config::for_tests(&jwt_secret);
        config.database_url = database_url.clone();
        config.api_keys = vec![(PUBLISHABLE_KEY.into(), "anon".into())];
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
        .env("SWITCHBOARD_PUBLISHABLE_KEY", PUBLISHABLE_KEY)
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
        Hub::start(Some(fixture_database(&[FIXTURE, SUPABASE_PROJECT]).await)).await,
        clients_dir().join("python"),
        python,
        &["-m", "pytest", "-q"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_receives_row_changes_with_filters_and_row_level_security() {
    let database_url = fixture_database(&[FIXTURE]).await;
    run_node_file("postgres_rows.test.mjs", Some(database_url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_set_up_the_supabase_way_works_with_realtime_js_and_supabase_js() {
    let database_url = fixture_database(&[SUPABASE_PROJECT]).await;
    run_node_file("supabase_project.test.mjs", Some(database_url)).await;
}

/// Supabase's own end-to-end Realtime checks (the functional suites of
/// supabase/realtime test/e2e/realtime-check.ts), ported with rows written by `pg`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_e2e_functional_suites_pass_against_the_hub() {
    let database_url = fixture_database(&[SUPABASE_E2E]).await;
    run_node_file("supabase_e2e.test.mjs", Some(database_url)).await;
}

#[test]
fn every_node_test_file_has_a_rust_test() {
    let listed = [
        "auth.test.mjs",
        "broadcast.test.mjs",
        "cluster.test.mjs", // run by tests/cluster.rs against three nodes
        "connect.test.mjs",
        "postgres_changes.test.mjs",
        "postgres_rows.test.mjs",
        "presence.test.mjs",
        "rest.test.mjs",
        "supabase_e2e.test.mjs",
        "supabase_js.test.mjs",
        "supabase_project.test.mjs",
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

/// `switchboard dev` boots from an empty folder (initdb, migrations, demo CRM), a
/// supabase-js portal client with a customer token receives that customer's job change
/// (and not another customer's), Ctrl-C stops hub and Postgres with exit 0, and a second
/// run reuses the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchboard_dev_boots_from_an_empty_folder_and_serves_the_demo_crm() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;

    require_tool("node", "install Node.js 20+");
    ensure_node_modules();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (http_port, pg_port) = (free_port(), free_port());

    let start_dev = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("dev")
            .current_dir(dir.path())
            .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{http_port}"))
            .env("SWITCHBOARD_DEV_PG_PORT", pg_port.to_string())
            .env_remove("DATABASE_URL")
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchboard dev starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        for line in stdout.by_ref() {
            let line = line.unwrap();
            let done = line.starts_with("Ctrl-C stops");
            banner.push(line);
            if done {
                break;
            }
        }
        // Keep draining both pipes so the child never blocks on a full pipe.
        std::thread::spawn(move || stdout.for_each(drop));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || BufReader::new(stderr).lines().for_each(drop));
        (child, banner)
    };
    let stop_dev = |child: &mut std::process::Child| {
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "switchboard dev exited with {status}");
    };

    let (mut dev, banner) = start_dev();
    let field = |prefix: &str| -> String {
        banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("banner lacks {prefix:?}:\n{}", banner.join("\n")))
    };
    let anon = field("anon key");
    let database = field("Database");
    let ada_line = banner
        .iter()
        .position(|l| l.contains("customer Ada"))
        .expect("Ada's token");
    let ada_token = banner[ada_line + 1].trim().to_owned();
    assert!(dir.path().join(".switchboard/pgdata/PG_VERSION").exists());

    let mut portal = tokio::process::Command::new("node")
        .arg("scripts/dev_portal.mjs")
        .current_dir(clients_dir().join("node"))
        .env("SB_URL", format!("http://127.0.0.1:{http_port}"))
        .env("SB_ANON", &anon)
        .env("SB_TOKEN", &ada_token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(portal.stdout.take().unwrap());
    let first = read_json_line(&mut lines).await;
    assert_eq!(first["status"], "SUBSCRIBED", "{first}");

    let (db, conn) = switchboard::db::connect(&database).await.unwrap();
    let granted: bool = db
        .query_one(
            "select bool_and(pg_catalog.has_table_privilege(r, 'public.' || t, 'select')) \
             from unnest(array['anon', 'authenticated', 'service_role']) r, \
                  unnest(array['jobs', 'deals', 'customers']) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(granted, "the demo keeps Supabase's default grants");
    db.batch_execute(
        "insert into jobs (customer_id, title) values ('22222222-2222-4222-8222-222222222222', 'not for Ada');
         insert into jobs (customer_id, title) values ('11111111-1111-4111-8111-111111111111', 'Window cleaning');",
    )
    .await
    .unwrap();
    let change = read_json_line(&mut lines).await;
    assert_eq!(change["change"]["eventType"], "INSERT", "{change}");
    assert_eq!(
        change["change"]["new"]["title"], "Window cleaning",
        "Ada must not get Bo's job first: {change}"
    );
    drop(db);
    conn.abort();
    let _ = portal.kill().await;
    stop_dev(&mut dev);

    let (mut again, banner) = start_dev();
    assert!(
        banner
            .iter()
            .any(|l| l.contains("Switchboard dev is running")),
        "{}",
        banner.join("\n")
    );
    let (db, conn) = switchboard::db::connect(&database).await.unwrap();
    let n: i64 = db
        .query_one(
            "select count(*) from jobs where title = 'Window cleaning'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the second run reuses the data");
    drop(db);
    conn.abort();
    stop_dev(&mut again);
}

/// The next line a child printed, parsed as JSON (20 s at most).
async fn read_json_line(
    reader: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
) -> serde_json::Value {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut line))
        .await
        .expect("output in time")
        .expect("readable output");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line:?}"))
}
