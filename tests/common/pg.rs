//! Throwaway Postgres for tests: a fresh database per test on a shared cluster, or a
//! dedicated cluster that a fault test may stop and start.
//!
//! With `DATABASE_URL` set, databases are created on that server. Otherwise one cluster
//! per test process is started from the Postgres 15 binaries, owned by user `postgres`,
//! on a free port of 127.0.0.1. Statics run no destructors, so every cluster is started
//! together with a small `sh` watchdog (its own process group, so Ctrl-C does not take it
//! down first) that stops Postgres and removes the data directory once the test process
//! is gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use switchboard::localpg;
use tokio_postgres::{Client, NoTls};

/// The installed server binaries and whether they must run as `postgres` (we are root).
fn pg() -> &'static (PathBuf, bool) {
    static PG: OnceLock<(PathBuf, bool)> = OnceLock::new();
    PG.get_or_init(|| {
        let bin = localpg::find_bin(None).expect("Postgres server binaries");
        (bin, localpg::running_as_root())
    })
}

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
        assert!(
            self.pg_ctl_start(),
            "pg_ctl start failed; see {}/postgres.log",
            self.dir.display()
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start_new() -> Cluster {
        let (bin, as_postgres) = pg();
        let dir = std::env::temp_dir().join(unique_name("switchboard-pg"));
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        if *as_postgres {
            localpg::give_to_postgres(&dir).expect("chown cluster dir");
        }
        let data = dir.join("data");
        localpg::initdb(bin, &data, *as_postgres, true).expect("initdb");
        spawn_watchdog(&dir);
        // A port found free can be taken before Postgres binds it: retry a few times.
        for _ in 0..5 {
            let cluster = Cluster {
                dir: dir.clone(),
                port: localpg::free_port().expect("bind port 0"),
            };
            if cluster.pg_ctl_start() {
                return cluster;
            }
        }
        panic!("could not start postgres in {}", dir.display());
    }

    fn pg_ctl_start(&self) -> bool {
        let opts = localpg::server_options(self.port, &self.dir, true, 300);
        let log = self.dir.join("postgres.log");
        let log = log.to_str().expect("utf-8 temp path");
        pg_ctl(
            &self.data_dir(),
            &["start", "-w", "-t", "60", "-l", log, "-o", &opts],
        )
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
    let (bin, as_postgres) = pg();
    let as_user = if *as_postgres {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         {as_user}'{pg_ctl}' -D '{data}' stop -m immediate >/dev/null 2>&1; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
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
    let (bin, as_postgres) = pg();
    localpg::pg_ctl(bin, data, *as_postgres, args).is_ok()
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
