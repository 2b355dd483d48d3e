//! Several hub nodes for cluster tests: a real `redis-server` on a random loopback port
//! (no persistence; stoppable and restartable on the same port) and hub nodes as real
//! `switchboard serve` processes, each on its own port with its own log file. Everything
//! started here is killed on drop, and by a small watchdog if the test process dies.
//! When a test panics, the tail of every node's log is printed.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::hub::{now, WsClient, SECRET};

/// How long a node may take to start serving.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a status condition may take to hold (reconnects, syncs, expiry).
pub const STATUS_DEADLINE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind port 0")
}

/// Kills `child` once this test process is gone (statics and `kill -9` skip `Drop`).
/// Never waited for: it outlives this process by design.
#[allow(clippy::zombie_processes)]
fn reap_with_test_process(child: u32) {
    use std::os::unix::process::CommandExt;
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill -9 {child} 2>/dev/null",
        pid = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn watchdog");
}

/// A `redis-server` on 127.0.0.1 without persistence.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts Redis on a free port; fails the test if `redis-server` is missing.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let mut r = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start (apt-get install redis-server; .ci/run does this)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): apt-get install redis-server")
            });
        reap_with_test_process(child.id());
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.pong() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    /// Whether Redis answers `PING`.
    fn pong(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills Redis (its clients see their connections drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts Redis again on the same port, empty.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running redis-server");
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to start a node.
#[derive(Clone)]
pub struct NodeSpec {
    pub redis_url: String,
    pub database_url: Option<String>,
    pub node_timeout_secs: u64,
}

/// One `switchboard serve` process.
pub struct Node {
    pub addr: SocketAddr,
    pub name: String,
    log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node and waits until `/ready` answers 200.
    pub async fn start(name: &str, spec: &NodeSpec) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join(format!("{name}.log"));
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("SWITCHBOARD_REDIS_URL", &spec.redis_url)
            .env(
                "SWITCHBOARD_NODE_TIMEOUT_SECS",
                spec.node_timeout_secs.to_string(),
            )
            .env("SWITCHBOARD_CAPTURE_POLL_MS", "200")
            .env("SWITCHBOARD_AUTO_MIGRATE", "false")
            .env("SWITCHBOARD_LOG_FORMAT", "pretty")
            .env(
                "RUST_LOG",
                "info,switchboard::cluster=debug,tokio_postgres=warn",
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(Stdio::null());
        match &spec.database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        let child = cmd.spawn().expect("start switchboard serve");
        reap_with_test_process(child.id());
        let mut node = Node {
            addr: format!("127.0.0.1:{port}").parse().expect("address"),
            name: name.to_owned(),
            log,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok((200, _)) = node.try_get("/ready").await {
                return node;
            }
            if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
                panic!("{name} exited with {status}:\n{}", node.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready within {START_DEADLINE:?}:\n{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no goodbye, no leaves; the others must notice the silence.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9 node");
            let _ = c.wait();
        }
    }

    async fn try_get(&self, path: &str) -> Result<(u16, String), reqwest::Error> {
        let resp = reqwest::get(format!("http://{}{path}", self.addr)).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// `/api/status` (an admin endpoint: asked with a service_role token).
    pub async fn status(&self) -> Value {
        let admin = switchboard::auth::mint_hs256(
            SECRET,
            &json!({"role": "service_role", "sub": "test-admin", "exp": now() + 3600}),
        )
        .expect("mint token");
        let resp = reqwest::Client::new()
            .get(format!("http://{}/api/status", self.addr))
            .bearer_auth(admin)
            .send()
            .await
            .expect("GET /api/status");
        let code = resp.status().as_u16();
        let body = resp.text().await.expect("status body");
        assert_eq!(code, 200, "{}: /api/status: {body}", self.name);
        serde_json::from_str(&body).expect("status JSON")
    }

    /// `/api/status` → `cluster`.
    pub async fn cluster_status(&self) -> Value {
        self.status().await["cluster"].clone()
    }

    /// Polls `/api/status` until `pred(cluster)` holds; fails the test after
    /// [`STATUS_DEADLINE`] with the last status seen.
    pub async fn wait_cluster(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STATUS_DEADLINE;
        loop {
            let s = self.cluster_status().await;
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not {what} within {STATUS_DEADLINE:?}; cluster status: {s}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `ws://…/realtime/v1/websocket?apikey=<anon>&vsn=…`.
    pub fn ws_url(&self, vsn: &str) -> String {
        let anon = switchboard::auth::mint_hs256(
            SECRET,
            &json!({"role": "anon", "sub": "anon", "exp": now() + 3600}),
        )
        .expect("mint token");
        format!(
            "ws://{}/realtime/v1/websocket?apikey={anon}&vsn={vsn}",
            self.addr
        )
    }

    /// A v1 client on this node.
    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.ws_url("1.0.0")).await
    }

    /// Base URL for realtime-js (`http://…/realtime/v1`).
    pub fn realtime_url(&self) -> String {
        format!("http://{}/realtime/v1", self.addr)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log_tail());
        }
        self.kill9();
    }
}

/// Redis and `n` nodes on it.
pub struct TestCluster {
    pub redis: RedisServer,
    pub nodes: Vec<Node>,
    pub spec: NodeSpec,
}

impl TestCluster {
    /// Starts Redis and `n` nodes, then waits until every node has every other as a
    /// synced peer (presence snapshots exchanged both ways).
    pub async fn start(n: usize, node_timeout_secs: u64, database_url: Option<String>) -> Self {
        let redis = RedisServer::start();
        let spec = NodeSpec {
            redis_url: redis.url(),
            database_url,
            node_timeout_secs,
        };
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(Node::start(&format!("node{i}"), &spec).await);
        }
        let c = TestCluster { redis, nodes, spec };
        c.wait_all_synced(n - 1).await;
        c
    }

    /// Every node is connected (`ok`) with `peers` synced peers.
    pub async fn wait_all_synced(&self, peers: usize) {
        for node in &self.nodes {
            node.wait_cluster(&format!("ok with {peers} synced peers"), |s| {
                synced_peers(s) == peers && s["state"] == "ok"
            })
            .await;
        }
    }
}

/// How many peers a `cluster` status shows as synced.
pub fn synced_peers(cluster: &Value) -> usize {
    cluster["peers"]
        .as_array()
        .map_or(0, |p| p.iter().filter(|p| p["synced"] == true).count())
}
