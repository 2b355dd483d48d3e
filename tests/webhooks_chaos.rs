//! The webhook guarantee under faults: a receiver that fails at random (500s, answers
//! after the hub's timeout, connection resets) while 8 writers commit with savepoints and
//! rollbacks and a long transaction commits late, and the hub — the real binary, with the
//! endpoint declared in its config file — is killed (SIGKILL) and restarted twice. The
//! receiver ends with every committed change of its tables, in order per row, none from
//! a rolled-back transaction; a change seen twice is a retry carrying the same event id
//! and the same content. Every request's signature verifies with the `standardwebhooks`
//! npm package.

mod common;
#[path = "capture/load.rs"]
mod load;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::receiver::{verify_signatures, Answer, Mode, Receiver};
use load::{assert_exactly_committed, run_load, setup, write_marker, LoadOpts};
use serde_json::Value;
use switchboard::changes::{Change, DbEvent, Op};
use tokio::process::{Child, Command};

/// A fixed secret, so the test can verify signatures (32 bytes in base64).
const SECRET: &str = "whsec_c3dpdGNoYm9hcmQtY2hhb3MtdGVzdC1zZWNyZXQtMDE=";
const MARKER: i64 = 1;

/// A `switchboard serve` process with its log in `dir`.
struct HubProcess {
    child: Child,
    log: PathBuf,
}

impl HubProcess {
    fn start(config: &Path, dir: &Path, n: usize) -> HubProcess {
        let log = dir.join(format!("hub-{n}.log"));
        let out = std::fs::File::create(&log).expect("hub log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", "info,tokio_postgres=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("start switchboard serve");
        HubProcess { child, log }
    }

    /// SIGKILL: no shutdown, no lease released; another hub must wait for it to expire.
    async fn kill(mut self) -> PathBuf {
        self.child.kill().await.expect("kill hub");
        self.log
    }
}

/// Waits until some hub holds the endpoint's lease (it exists and is being delivered).
async fn wait_for_lease(db: &tokio_postgres::Client, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = db
            .query_opt(
                "select lease_owner from realtime.webhook_endpoints \
                 where name = $1 and lease_expires_at > now()",
                &[&name],
            )
            .await;
        if let Ok(Some(r)) = row {
            if r.get::<_, Option<String>>(0).is_some() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hub took the webhook lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A webhook event back as the change it describes.
fn to_change(e: &Value) -> Change {
    let id = e["id"].as_str().expect("event id");
    let (log_id, seq) = id.split_once('-').expect("id is <log id>-<seq>");
    let row = |v: &Value| v.as_object().cloned();
    Change {
        id: log_id.parse().expect("log id"),
        seq: seq.parse().expect("seq"),
        xid: u64::MAX,
        schema: e["schema"].as_str().unwrap().to_owned(),
        table: e["table"].as_str().unwrap().to_owned(),
        op: Op::parse(e["type"].as_str().unwrap()).expect("op"),
        record: row(&e["record"]),
        old_record: row(&e["old_record"]),
        commit_time: chrono::DateTime::parse_from_rfc3339(e["commit_timestamp"].as_str().unwrap())
            .expect("commit_timestamp")
            .with_timezone(&chrono::Utc),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_every_committed_change_once_per_id_across_two_hub_kills() {
    let db = common::pg::test_db().await;
    let sql = db.client().await;
    setup(&sql).await;
    // Webhooks show `old_record` by REPLICA IDENTITY (the key by default); the check
    // below reads each DELETE's and UPDATE's whole previous version.
    for t in load::TABLES {
        sql.batch_execute(&format!("alter table {t} replica identity full"))
            .await
            .unwrap();
    }
    let rx = Receiver::start(Mode::Chaos {
        p500: 0.15,
        pslow: 0.03,
        preset: 0.1,
        slow: Duration::from_millis(800),
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
database_url = "{url}"
jwt_secret = "webhooks-chaos-test-secret-0123456789"
inspector = false
capture_poll_ms = 200
webhook_batch_events = 50
webhook_batch_ms = 200
webhook_timeout_ms = 500
webhook_retry_initial_ms = 50
webhook_retry_max_secs = 1
webhook_pause_after_failures = 1000000
webhook_lease_secs = 3

[[webhooks]]
name = "sync"
url = "{hook}"
tables = ["public.items_a", "public.items_b", "public.load_marker"]
secret = "{SECRET}"
"#,
            url = db.url,
            hook = rx.url,
        ),
    )
    .unwrap();

    let mut logs = Vec::new();
    let hub = HubProcess::start(&config, dir.path(), 1);
    wait_for_lease(&sql, "sync").await;
    let opts = LoadOpts {
        writers: 8,
        duration: Duration::from_secs(7),
        long_tx: Some(Duration::from_secs(4)),
    };
    let url = db.url.clone();
    let load = tokio::spawn(async move { run_load(&url, &opts).await });

    // Kill the delivering hub twice while the load runs; each successor takes the
    // endpoint over once the dead hub's lease expires.
    tokio::time::sleep(Duration::from_secs(2)).await;
    logs.push(hub.kill().await);
    let hub = HubProcess::start(&config, dir.path(), 2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    logs.push(hub.kill().await);
    let hub = HubProcess::start(&config, dir.path(), 3);

    let load = load.await.expect("load task");
    write_marker(&db.url, MARKER).await;
    let delivered = rx
        .wait_for_request(Duration::from_secs(120), |r| {
            r.processed()
                && r.events()
                    .iter()
                    .any(|e| e["table"] == "load_marker" && e["record"]["id"] == MARKER)
        })
        .await;
    logs.push(hub.kill().await);
    if !delivered {
        for log in &logs {
            println!(
                "==== {} ====\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        panic!("the marker never reached the receiver");
    }

    let requests = rx.requests();
    let answers = |a: Answer| requests.iter().filter(|r| r.answer == a).count();
    println!(
        "{} committed, {} rolled back; {} requests: {} ok, {} late, {} errors, {} resets",
        load.committed.len(),
        load.rolled_back_writes,
        requests.len(),
        answers(Answer::Ok),
        answers(Answer::LateOk),
        answers(Answer::Error),
        answers(Answer::Reset),
    );
    assert!(load.committed.len() > 300, "too little load");
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            text.contains("delivering webhook endpoint"),
            "{} never delivered (no takeover?):\n{text}",
            log.display()
        );
    }
    assert!(load.rolled_back_writes > 0, "no rolled-back writes to leak");
    for a in [Answer::LateOk, Answer::Error, Answer::Reset] {
        assert!(answers(a) > 0, "the receiver never answered {a:?}");
    }

    // Duplicates are retries: the same id always carries the same change.
    let mut by_id: HashMap<String, Value> = HashMap::new();
    let mut first_seen = Vec::new();
    let mut duplicates = 0;
    for e in rx.processed_events() {
        let id = e["id"].as_str().expect("event id").to_owned();
        match by_id.get(&id) {
            Some(earlier) => {
                assert_eq!(earlier, &e, "event {id} came twice with different content");
                duplicates += 1;
            }
            None => {
                by_id.insert(id, e.clone());
                first_seen.push(DbEvent::Change(to_change(&e)));
            }
        }
    }
    println!("{duplicates} duplicate deliveries (retries of the same ids)");
    assert_exactly_committed(&load.committed, &first_seen);
    verify_signatures(&requests, SECRET);
}
