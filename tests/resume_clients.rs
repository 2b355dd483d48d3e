//! Nothing lost across reconnects and hub restarts, with the real clients: realtime-js
//! with `params: { resume }` and the Python client with `params={"resume": ...}`, through
//! a TCP proxy that can black-hole and cut connections, against hub processes that are
//! stopped with SIGTERM, killed with SIGKILL, or replaced by a second hub. Writers commit
//! (with savepoints and rollbacks) throughout. Each case prints lost, duplicated and
//! replayed counts and asserts nothing the subscriber may see is lost, nothing it may
//! not see arrives, and duplicates stay within the documented window.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::clients::{ensure_node_modules, ensure_python_venv};
use common::proxy::{Mode, Proxy};
use rand::Rng;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "resume-clients-secret-0123456789abcdef";
const ALICE: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const BOB: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const CAROL: &str = "cccccccc-0000-4000-8000-000000000003";
/// Commits per second the writers aim for (all owners together).
const WRITE_RATE: f64 = 40.0;

/// Alice sees her own rows and the rows of owners she was given access to.
const FIXTURE: &str = "
create table public.items (id bigserial primary key, owner uuid not null, n int4 not null default 0);
create table public.access (user_id uuid not null, owner uuid not null, primary key (user_id, owner));
grant select on public.items, public.access to authenticated;
alter table public.items enable row level security;
create policy shared on public.items for select to authenticated using (
    exists (select 1 from public.access a where a.user_id = auth.uid() and a.owner = items.owner));
select realtime.enable('public.items');
";

fn mint(claims: Value) -> String {
    switchboard::auth::mint_hs256(SECRET, &claims).unwrap()
}

fn user_token(sub: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    mint(json!({"role": "authenticated", "sub": sub, "exp": exp}))
}

fn anon_key() -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    mint(json!({"role": "anon", "exp": exp}))
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A hub process (the real binary) on a fixed address, restartable there.
struct HubProcess {
    addr: SocketAddr,
    db_url: String,
    child: Option<Child>,
    env: Vec<(&'static str, String)>,
}

impl HubProcess {
    async fn start(db_url: &str, env: Vec<(&'static str, String)>) -> HubProcess {
        let mut hub = HubProcess {
            addr: free_addr(),
            db_url: db_url.to_owned(),
            child: None,
            env,
        };
        hub.restart().await;
        hub
    }

    /// Starts the binary (again) and waits until it is ready.
    async fn restart(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .env("DATABASE_URL", &self.db_url)
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("SWITCHBOARD_LISTEN", self.addr.to_string())
            .env("SWITCHBOARD_SHUTDOWN_DEADLINE_SECS", "5")
            .env("SWITCHBOARD_CAPTURE_POLL_MS", "200")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start the hub binary"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{}/ready", self.addr)).await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hub at {} never ready",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` and waits for the process to exit.
    async fn stop(&mut self, signal: &str) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
        let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("hub exits")
            .unwrap();
        if signal == "-TERM" {
            assert!(exit.success(), "a SIGTERM'd hub exits 0, got {exit}");
        }
    }
}

/// Which real client subscribes.
#[derive(Debug, Clone, Copy)]
enum Client {
    RealtimeJs,
    Python,
}

/// The real client as a child process printing one JSON line per event.
struct Subscriber {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    changes: Vec<i64>,
    systems: Vec<Value>,
    log: Vec<Value>,
}

impl Subscriber {
    async fn start(client: Client, via: SocketAddr, token: &str, key: &str) -> Subscriber {
        let mut cmd = match client {
            Client::RealtimeJs => {
                let dir = tokio::task::spawn_blocking(ensure_node_modules)
                    .await
                    .unwrap();
                let mut cmd = Command::new("node");
                cmd.current_dir(dir)
                    .arg("scripts/resume_subscriber.mjs")
                    .env("SB_WS", format!("ws://{via}/realtime/v1"))
                    .env("SB_ANON", anon_key());
                cmd
            }
            Client::Python => {
                let python = tokio::task::spawn_blocking(ensure_python_venv)
                    .await
                    .unwrap();
                let mut cmd = Command::new(python);
                cmd.current_dir(common::clients::clients_dir().join("python"))
                    .arg("resume_subscriber.py")
                    .env("SB_URL", format!("http://{via}/realtime/v1"));
                cmd
            }
        };
        let mut child = cmd
            .env("SB_TOKEN", token)
            .env("SB_RESUME", key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the client");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Subscriber {
            child,
            lines,
            changes: Vec::new(),
            systems: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Reads events until `pred` holds for one; fails after `within`.
    async fn until(&mut self, within: Duration, what: &str, mut pred: impl FnMut(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{what} not seen within {within:?}; recent events: {:?}",
                        self.tail()
                    )
                })
                .unwrap_or_else(|| {
                    panic!("client exited before {what}; events: {:?}", self.tail())
                });
            match line["ev"].as_str() {
                Some("change") => self.changes.push(line["id"].as_i64().unwrap_or(-1)),
                Some("system") => self.systems.push(line["payload"].clone()),
                _ => {}
            }
            let done = pred(&line);
            self.log.push(line);
            if done {
                return;
            }
        }
    }

    fn tail(&self) -> Vec<&Value> {
        self.log.iter().rev().take(12).collect()
    }

    /// Waits for the next resume system message (the first one after `after` systems).
    async fn resumed(&mut self, within: Duration) -> Value {
        let before = self.systems.len();
        self.until(within, "the resume system message", |l| {
            l["ev"] == "system"
                && l["payload"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("esumed"))
        })
        .await;
        self.systems[before..]
            .iter()
            .rev()
            .find(|s| s["message"].as_str().is_some_and(|m| m.contains("esumed")))
            .cloned()
            .unwrap()
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Writers committing rows for several owners, with savepoints and rollbacks; they
/// record what committed.
struct Writers {
    stop: CancellationToken,
    committed: Arc<Mutex<Vec<(i64, &'static str)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(db_url: &str) -> Writers {
        let stop = CancellationToken::new();
        let committed = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (stop, committed, url) = (stop.clone(), committed.clone(), db_url.to_owned());
            tasks.push(tokio::spawn(async move {
                let client = connect(&url).await;
                while !stop.is_cancelled() {
                    if let Some(rows) = write_once(&client).await {
                        committed.lock().unwrap().extend(rows);
                    }
                    let pause = Duration::from_secs_f64(2.0 / WRITE_RATE);
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        Writers {
            stop,
            committed,
            tasks,
        }
    }

    async fn finish(self) -> Vec<(i64, &'static str)> {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
        let c = self.committed.lock().unwrap().clone();
        c
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// One transaction: 1-3 rows for random owners, sometimes a rolled-back savepoint,
/// sometimes rolled back whole. Returns what committed.
async fn write_once(c: &tokio_postgres::Client) -> Option<Vec<(i64, &'static str)>> {
    let owners = [ALICE, BOB, CAROL];
    let (n, rollback, savepoint) = {
        let mut rng = rand::rng();
        (
            rng.random_range(1..=3),
            rng.random_bool(0.2),
            rng.random_bool(0.3),
        )
    };
    c.batch_execute("begin").await.ok()?;
    let mut rows = Vec::new();
    for i in 0..n {
        let owner = owners[rand::rng().random_range(0..owners.len())];
        if savepoint && i == 0 {
            c.batch_execute("savepoint s").await.ok()?;
            insert(c, owner).await?;
            c.batch_execute("rollback to savepoint s").await.ok()?;
        }
        rows.push((insert(c, owner).await?, owner));
    }
    if rollback {
        c.batch_execute("rollback").await.ok()?;
        return Some(Vec::new());
    }
    c.batch_execute("commit").await.ok()?;
    Some(rows)
}

async fn insert(c: &tokio_postgres::Client, owner: &str) -> Option<i64> {
    c.query_one(
        "insert into public.items (owner) values ($1::text::uuid) returning id",
        &[&owner],
    )
    .await
    .ok()
    .map(|r| r.get(0))
}

/// A fresh database with the fixture; Alice may see her rows and Carol's.
async fn database() -> String {
    let db = common::pg::test_db().await;
    let c = db.client().await;
    switchboard::db::migrate(&c).await.unwrap();
    c.batch_execute(FIXTURE).await.unwrap();
    c.execute(
        "insert into public.access values ($1::text::uuid, $1::text::uuid), ($1::text::uuid, $2::text::uuid)",
        &[&ALICE, &CAROL],
    )
    .await
    .unwrap();
    db.url
}

/// The fault a case injects while writers commit.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The network black-holes for this long, then the connection is cut.
    Outage(Duration),
    /// The hub stops on SIGTERM and starts again.
    Sigterm,
    /// The hub is killed with SIGKILL and started again.
    Sigkill,
    /// Connections are cut and new ones go to a second hub on the same database.
    SecondHub,
}

/// What the subscriber got, against what committed.
struct Outcome {
    lost: Vec<i64>,
    duplicated: usize,
    leaked: Vec<i64>,
    replayed: usize,
}

async fn run(client: Client, fault: Fault, key: &str) -> Outcome {
    let db_url = database().await;
    let mut hub = HubProcess::start(&db_url, Vec::new()).await;
    let proxy = Proxy::start(hub.addr).await;
    let mut sub = Subscriber::start(client, proxy.addr, &user_token(ALICE), key).await;
    let first = sub.resumed(Duration::from_secs(20)).await;
    assert!(
        first["message"].as_str().unwrap().contains("Not resumed"),
        "{first}"
    );
    let writers = Writers::start(&db_url).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut second = None;
    match fault {
        Fault::Outage(d) => {
            proxy.set_mode(Mode::BlackHole);
            tokio::time::sleep(d).await;
            proxy.cut();
            proxy.set_mode(Mode::Forward);
        }
        Fault::Sigterm => {
            hub.stop("-TERM").await;
            hub.restart().await;
        }
        Fault::Sigkill => {
            hub.stop("-KILL").await;
            hub.restart().await;
        }
        Fault::SecondHub => {
            let b = HubProcess::start(&db_url, Vec::new()).await;
            // Frames stop reaching the client (so its acknowledgements stop) while the
            // second hub's capture moves past them: the resume must replay that stretch.
            // Without it the client can be back before anything it missed was read by
            // the second hub, which then delivers it live and the test proves nothing.
            proxy.set_mode(Mode::BlackHole);
            tokio::time::sleep(Duration::from_secs(2)).await;
            proxy.retarget(b.addr);
            proxy.cut();
            proxy.set_mode(Mode::Forward);
            second = Some(b);
        }
    }
    let resumed = sub.resumed(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let committed = writers.finish().await;
    // A last row of Alice's, after every other commit: once it arrives, all has.
    let marker = insert(&connect(&db_url).await, ALICE).await.unwrap();
    sub.until(Duration::from_secs(30), "the marker row", |l| {
        l["ev"] == "change" && l["id"] == marker
    })
    .await;

    let visible: BTreeSet<i64> = committed
        .iter()
        .filter(|(_, owner)| *owner != BOB)
        .map(|(id, _)| *id)
        .chain([marker])
        .collect();
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for id in &sub.changes {
        *counts.entry(*id).or_default() += 1;
    }
    let outcome = Outcome {
        lost: visible
            .iter()
            .filter(|id| !counts.contains_key(id))
            .copied()
            .collect(),
        duplicated: counts.values().map(|n| n - 1).sum(),
        leaked: counts
            .keys()
            .filter(|id| !visible.contains(id))
            .copied()
            .collect(),
        replayed: replayed_count(&resumed),
    };
    println!(
        "{client:?} {fault:?}: {} committed visible, {} received, lost {}, duplicated {}, replayed {}, leaked {} ({})",
        visible.len(),
        sub.changes.len(),
        outcome.lost.len(),
        outcome.duplicated,
        outcome.replayed,
        outcome.leaked.len(),
        resumed["message"],
    );
    if outcome.duplicated > 0 {
        // Where the duplicates sit in the event stream (for a failing run).
        let dups: BTreeSet<i64> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect();
        let stream: Vec<String> = sub
            .log
            .iter()
            .filter_map(|l| match l["ev"].as_str() {
                Some("change") => {
                    let id = l["id"].as_i64().unwrap_or(-1);
                    Some(if dups.contains(&id) {
                        format!("*{id}")
                    } else {
                        id.to_string()
                    })
                }
                Some("system") => Some(format!("[{}]", l["payload"]["message"])),
                Some("status") => Some(format!("<{}>", l["status"])),
                _ => None,
            })
            .collect();
        println!("stream: {}", stream.join(" "));
    }
    sub.stop().await;
    drop(second);
    outcome
}

/// The count a resume message reports (Python keeps only the message text).
fn replayed_count(msg: &Value) -> usize {
    msg["count"]
        .as_u64()
        .map(|n| n as usize)
        .unwrap_or_else(|| {
            msg["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("Resumed: "))
                .and_then(|m| m.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
}

/// Duplicates allowed: frames after the last acknowledged ping (pings every 100 ms while
/// frames flow, plus a round trip), or after a crash up to one checkpoint interval.
fn assert_outcome(o: &Outcome, window: Duration) {
    assert!(o.lost.is_empty(), "lost {:?}", o.lost);
    assert!(
        o.leaked.is_empty(),
        "received rows it may not see: {:?}",
        o.leaked
    );
    let bound = (WRITE_RATE * 3.0 * window.as_secs_f64()).ceil() as usize;
    assert!(
        o.duplicated <= bound,
        "{} duplicates, more than the {bound} the {window:?} window allows",
        o.duplicated
    );
    assert!(
        o.replayed > 0,
        "nothing was replayed: the fault did not open a gap"
    );
}

const NETWORK_WINDOW: Duration = Duration::from_millis(500);
const CRASH_WINDOW: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_loses_nothing_over_a_three_second_outage() {
    let o = run(
        Client::RealtimeJs,
        Fault::Outage(Duration::from_secs(3)),
        "js-outage-3",
    )
    .await;
    assert_outcome(&o, NETWORK_WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_loses_nothing_over_an_outage_longer_than_the_idle_timeout() {
    let o = run(
        Client::RealtimeJs,
        Fault::Outage(Duration::from_secs(70)),
        "js-outage-70",
    )
    .await;
    assert_outcome(&o, NETWORK_WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_loses_nothing_over_a_hub_restart() {
    let o = run(Client::RealtimeJs, Fault::Sigterm, "js-sigterm").await;
    assert_outcome(&o, NETWORK_WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_loses_nothing_when_the_hub_is_killed() {
    let o = run(Client::RealtimeJs, Fault::Sigkill, "js-sigkill").await;
    assert_outcome(&o, CRASH_WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_resumes_on_a_second_hub() {
    let o = run(Client::RealtimeJs, Fault::SecondHub, "js-second-hub").await;
    assert_outcome(&o, CRASH_WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_loses_nothing_over_a_three_second_outage() {
    let o = run(
        Client::Python,
        Fault::Outage(Duration::from_secs(3)),
        "py-outage-3",
    )
    .await;
    assert_outcome(&o, NETWORK_WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_loses_nothing_over_a_hub_restart() {
    let o = run(Client::Python, Fault::Sigterm, "py-sigterm").await;
    assert_outcome(&o, NETWORK_WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_resumes_on_a_second_hub() {
    let o = run(Client::Python, Fault::SecondHub, "py-second-hub").await;
    assert_outcome(&o, CRASH_WINDOW);
}

/// Waits until the hub has seen `sub`'s client read past its first join's resume message:
/// a change it received since moves the subscription's checkpointed position, which only
/// the client's pongs do. (Until then, a channel dropped is told to refetch again on its
/// next join, whatever else happened, since the client may never have read the first.)
async fn acknowledged(db: &tokio_postgres::Client, sub: &mut Subscriber) {
    let hold = "select snapshot::text from realtime.log_holds where kind = 'resume'";
    let before: String = db.query_one(hold, &[]).await.unwrap().get(0);
    let seen = insert(db, ALICE).await.unwrap();
    sub.until(Duration::from_secs(10), "a live change", |l| {
        l["ev"] == "change" && l["id"] == seen
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: String = db.query_one(hold, &[]).await.unwrap().get(0);
        if now != before {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the position never moved past {before}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_is_told_to_refetch_when_the_grace_has_passed() {
    let db_url = database().await;
    let env = vec![("SWITCHBOARD_RESUME_GRACE_SECS", "2".to_owned())];
    let hub = HubProcess::start(&db_url, env).await;
    let proxy = Proxy::start(hub.addr).await;
    let mut sub = Subscriber::start(
        Client::RealtimeJs,
        proxy.addr,
        &user_token(ALICE),
        "js-grace",
    )
    .await;
    sub.resumed(Duration::from_secs(20)).await;
    let db = connect(&db_url).await;
    acknowledged(&db, &mut sub).await;
    // The hub sees the socket close and parks it; the client stays away past the grace.
    proxy.set_mode(Mode::BlackHole);
    proxy.cut();
    insert(&db, ALICE).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set_mode(Mode::Forward);
    let resumed = sub.resumed(Duration::from_secs(30)).await;
    assert_eq!(resumed["recovered"], false, "{resumed}");
    assert!(
        resumed["message"].as_str().unwrap().contains("grace"),
        "{resumed}"
    );
    // The channel stays subscribed: live changes keep coming.
    let live = insert(&db, ALICE).await.unwrap();
    sub.until(Duration::from_secs(10), "a live change", |l| {
        l["ev"] == "change" && l["id"] == live
    })
    .await;
    sub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_is_not_replayed_rows_it_lost_access_to_meanwhile() {
    let db_url = database().await;
    let hub = HubProcess::start(&db_url, Vec::new()).await;
    let proxy = Proxy::start(hub.addr).await;
    let mut sub = Subscriber::start(
        Client::RealtimeJs,
        proxy.addr,
        &user_token(ALICE),
        "js-revoked",
    )
    .await;
    sub.resumed(Duration::from_secs(20)).await;
    let writers = Writers::start(&db_url).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set_mode(Mode::BlackHole);
    let db = connect(&db_url).await;
    // Alice loses access to Carol's rows while she is away.
    db.execute(
        "delete from public.access where user_id = $1::text::uuid and owner = $2::text::uuid",
        &[&ALICE, &CAROL],
    )
    .await
    .unwrap();
    let revoked_after: i64 = db
        .query_one("select coalesce(max(id), 0) from public.items", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    proxy.set_mode(Mode::Forward);
    let resumed = sub.resumed(Duration::from_secs(30)).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let committed = writers.finish().await;
    let marker = insert(&db, ALICE).await.unwrap();
    sub.until(Duration::from_secs(30), "the marker row", |l| {
        l["ev"] == "change" && l["id"] == marker
    })
    .await;
    let received: BTreeSet<i64> = sub.changes.iter().copied().collect();
    let alices: Vec<i64> = committed
        .iter()
        .filter(|(_, o)| *o == ALICE)
        .map(|(id, _)| *id)
        .collect();
    let lost: Vec<&i64> = alices.iter().filter(|id| !received.contains(id)).collect();
    let carols_after: Vec<i64> = committed
        .iter()
        .filter(|(id, o)| *o == CAROL && *id > revoked_after && received.contains(id))
        .map(|(id, _)| *id)
        .collect();
    println!(
        "revoked access: {} of Alice's rows committed, lost {}, replayed {}, Carol's rows after the revocation received {}",
        alices.len(),
        lost.len(),
        replayed_count(&resumed),
        carols_after.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}");
    assert!(
        carols_after.is_empty(),
        "rows Alice lost access to: {carols_after:?}"
    );
    sub.stop().await;
}
