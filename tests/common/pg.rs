//! Throwaway Postgres for tests: a fresh database per test on a shared cluster, or a
//! dedicated cluster that a fault test may stop and start.
//!
//! The hub connects as superuser `postgres`, or as [`HUB_ROLE`], a login role that is
//! NOINHERIT, a member of exactly anon, authenticated and service_role, and has only what
//! `realtime.grant_hub` grants (the README's "Running as a non-superuser"). Test targets
//! whose name ends in `_as_authenticator` use it (`tests/*_as_authenticator.rs` load the
//! row-scope, capture, private-channel and resume files a second time), and so does every
//! hub started through `PgHub` or `TestDb::hub_url` when
//! `SWITCHBOARD_TEST_HUB_ROLE=authenticator` is set.
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

/// The path of Postgres program `name` (`pg_dump`, `psql`) from the installed binaries.
pub fn pg_program(name: &str) -> PathBuf {
    pg().0.join(name)
}

/// The non-superuser login role a hub may run as in tests.
pub const HUB_ROLE: &str = "switchboard_test_hub";
const HUB_ROLE_PASSWORD: &str = "switchboard-test-hub";

/// Whether hubs in this test process connect as [`HUB_ROLE`] rather than as superuser.
pub fn hub_as_authenticator() -> bool {
    match std::env::var("SWITCHBOARD_TEST_HUB_ROLE").as_deref() {
        Ok("authenticator") => true,
        Ok("superuser") => false,
        Ok("") | Err(_) => env!("CARGO_CRATE_NAME").ends_with("_as_authenticator"),
        Ok(other) => {
            panic!("SWITCHBOARD_TEST_HUB_ROLE={other}: expected authenticator or superuser")
        }
    }
}

/// One fresh, empty database (no migrations applied).
pub struct TestDb {
    /// As superuser `postgres`: setup, writes, faults.
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// A new connection to this database; its connection task runs on the caller's runtime.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The URL the hub connects with: `url`, or [`HUB_ROLE`]'s (see [`hub_as_authenticator`])
    /// once the database is migrated and the role has what `realtime.grant_hub` grants.
    pub async fn hub_url(&self) -> String {
        if !hub_as_authenticator() {
            return self.url.clone();
        }
        self.grant_authenticator().await
    }

    /// Creates [`HUB_ROLE`] if needed, grants it the hub's rights on this (migrated)
    /// database and returns its URL.
    pub async fn grant_authenticator(&self) -> String {
        let admin = self.client().await;
        ensure_hub_role(&admin).await;
        switchboard::db::grant_hub(&admin, HUB_ROLE)
            .await
            .expect("grant the hub's rights");
        self.authenticator_url()
    }

    /// A connection as the hub connects ([`TestDb::hub_url`]).
    pub async fn hub_client(&self) -> Client {
        connect(&self.hub_url().await).await
    }

    /// A connection as [`HUB_ROLE`] with the hub's rights, whatever the mode.
    pub async fn hub_client_as_authenticator(&self) -> Client {
        connect(&self.grant_authenticator().await).await
    }

    /// This database as [`HUB_ROLE`] (the role must exist: see [`TestDb::hub_url`]).
    pub fn authenticator_url(&self) -> String {
        with_user(&self.url, HUB_ROLE, HUB_ROLE_PASSWORD)
    }
}

/// Creates [`HUB_ROLE`] (cluster-wide, once) as the README says: login, NOINHERIT, member
/// of exactly anon, authenticated and service_role. Needs the token roles, which the
/// migrations create.
pub async fn ensure_hub_role(admin: &Client) {
    let sql = format!(
        "do $do$ begin \
           if not exists (select 1 from pg_roles where rolname = '{HUB_ROLE}') then \
             create role {HUB_ROLE} login noinherit password '{HUB_ROLE_PASSWORD}'; \
           end if; \
           if not pg_has_role('{HUB_ROLE}', 'service_role', 'MEMBER') then \
             grant anon, authenticated, service_role to {HUB_ROLE}; \
           end if; \
         exception when duplicate_object or unique_violation then null; \
         end $do$"
    );
    // Test binaries run one at a time, tests within one in parallel: one creator per
    // process is enough, and the block tolerates a role left by an earlier run.
    static CREATED: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut created = CREATED.lock().await;
    if !*created {
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("create {HUB_ROLE}: {e}"));
        *created = true;
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
    tokio::task::spawn_blocking(|| Cluster::start_new(""))
        .await
        .expect("cluster start task")
}

/// One cluster per test process with `wal_level=logical`, for tests of logical
/// decoding; started from the installed binaries even when `DATABASE_URL` is set, as
/// that server's WAL level is not ours to choose. Commits wait for their WAL to be
/// flushed: decoding reads only flushed WAL, so a commit returned before its flush could
/// be missing from a read that follows it.
pub async fn logical_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        CLUSTER.get_or_init(|| Cluster::start_new(" -c wal_level=logical -c synchronous_commit=on"))
    })
    .await
    .expect("cluster start task")
}

/// A Postgres cluster under a temp dir; stopped and removed when the test process exits.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    /// Server options beside the usual ones.
    options: &'static str,
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

    /// A crash (`-m immediate`): no shutdown checkpoint, recovery from the WAL at the next
    /// start; the server may then hand out again transaction ids it had handed out.
    pub fn crash(&self) {
        pg_ctl(&self.data_dir(), &["stop", "-m", "immediate", "-w"]);
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

    fn start_new(options: &'static str) -> Cluster {
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
                options,
            };
            if cluster.pg_ctl_start() {
                return cluster;
            }
        }
        panic!("could not start postgres in {}", dir.display());
    }

    fn pg_ctl_start(&self) -> bool {
        let opts = localpg::server_options(self.port, &self.dir, true, 300) + self.options;
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
    CLUSTER.get_or_init(|| Cluster::start_new(""))
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

/// `url` with `user:password@` as its credentials (URL form only).
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let scheme_end = url.find("://").expect("a postgres:// URL") + 3;
    let rest = &url[scheme_end..];
    let host = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    format!("{}{user}:{password}@{host}", &url[..scheme_end])
}

/// A connection to `url`; its connection task runs on the caller's runtime.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// One range read of the log rows between `from` and `until` (every table's, with no
/// event limit): `stmt` is `capture::READ_RANGE_SQL` prepared on `client`.
pub async fn range_read(
    client: &mut Client,
    stmt: &tokio_postgres::Statement,
    from: &switchboard::capture::Position,
    until: &switchboard::capture::Position,
) -> switchboard::capture::RangeRead {
    let all = switchboard::capture::LogTables::all();
    switchboard::capture::entries_between(client, stmt, from, until, &all, usize::MAX)
        .await
        .expect("range read")
}
