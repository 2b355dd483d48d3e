//! Throwaway Postgres for tests: a fresh database per test on a shared cluster, or a
//! dedicated cluster that a fault test may stop and start.
//!
//! With `DATABASE_URL` set, databases are created on that server. Otherwise one cluster
//! per test process is started from the Postgres 15 binaries, owned by user `postgres`,
//! on a free port of 127.0.0.1. Statics run no destructors, so every cluster is started
//! together with a small `sh` watchdog (its own process group, so Ctrl-C does not take it
//! down first) that stops Postgres and removes the data directory once the test process
//! is gone.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tokio_postgres::{Client, NoTls};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// One fresh, empty database (no migrations applied).
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// A new connection to this database; its connection task runs on the caller's runtime.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

/// A fresh uniquely named database on `DATABASE_URL` or on the shared test cluster.
pub async fn test_db() -> TestDb {
    let admin_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => shared_cluster().admin_url(),
    };
    let name = unique_name("sb_test");
    let admin = connect(&admin_url).await;
    admin
        .batch_execute(&format!("create database \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    TestDb {
        url: with_dbname(&admin_url, &name),
        name,
    }
}

/// A cluster of its own, for tests that stop and start Postgres.
pub async fn dedicated_cluster() -> Cluster {
    tokio::task::spawn_blocking(Cluster::start_new)
        .await
        .expect("cluster start task")
}

/// A Postgres cluster under a temp dir; stopped and removed when the test process exits.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    /// URL of the `postgres` database as superuser `postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Same as `admin_url`.
    pub fn url(&self) -> String {
        self.admin_url()
    }

    /// Creates a fresh database in this cluster and returns its URL.
    pub async fn create_db(&self) -> String {
        let name = unique_name("sb_test");
        connect(&self.admin_url())
            .await
            .batch_execute(&format!("create database \"{name}\""))
            .await
            .expect("create database");
        with_dbname(&self.admin_url(), &name)
    }

    /// Fast shutdown: sessions are terminated, in-flight transactions abort.
    pub fn stop(&self) {
        pg_ctl(&self.data_dir(), &["stop", "-m", "fast", "-w"]);
    }

    /// Starts the (stopped) cluster again on the same port.
    pub fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        let log = log.to_str().expect("utf-8 temp path");
        let ok = pg_ctl(
            &self.data_dir(),
            &["start", "-w", "-t", "60", "-l", log, "-o", &opts],
        );
        assert!(ok, "pg_ctl start failed; see {log}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start_new() -> Cluster {
        let dir = std::env::temp_dir().join(unique_name("switchboard-pg"));
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir));
        let data = dir.join("data");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data));
        spawn_watchdog(&dir);
        // A port found free can be taken before Postgres binds it: retry a few times.
        for _ in 0..5 {
            let cluster = Cluster {
                dir: dir.clone(),
                port: free_port(),
            };
            let log = dir.join("postgres.log");
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=300",
                cluster.port,
                dir.display()
            );
            if pg_ctl(
                &data,
                &[
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    log.to_str().unwrap(),
                    "-o",
                    &opts,
                ],
            ) {
                return cluster;
            }
        }
        panic!("could not start postgres in {}", dir.display());
    }
}

fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start_new)
}

/// Stops Postgres and removes `dir` once this test process has exited. Never waited
/// for: it outlives this process by design.
#[allow(clippy::zombie_processes)]
fn spawn_watchdog(dir: &Path) {
    use std::os::unix::process::CommandExt;
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         runuser -u postgres -- {PG_BIN}/pg_ctl -D '{data}' stop -m immediate >/dev/null 2>&1; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        data = dir.join("data").display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn postgres watchdog");
}

fn pg_ctl(data: &Path, args: &[&str]) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/pg_ctl"))
        .arg("-D")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run pg_ctl")
        .success()
}

fn run(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// `url` pointing at database `name`; handles URL and `key=value` forms.
fn with_dbname(url: &str, name: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={name}");
    };
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_start = scheme_end + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}
