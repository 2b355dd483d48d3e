//! What a scenario runs against: a throwaway Postgres cluster (or `--database-url`), the
//! hub as a separate release process (or `--hub-url`), and tokens signed for it.
//! Everything started here is stopped when its guard drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use switchboard::localpg;

use crate::BenchError;

/// The HS256 secret of a hub this program starts.
pub const SECRET: &str = "switchboard-bench-secret-0123456789abcdef";

/// A Postgres cluster in a temp dir (owned by user `postgres` when we are root);
/// stopped and removed on drop.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// `pg_ctl start -o` options, kept so the cluster can be started again.
    opts: String,
    pub url: String,
}

fn setup(e: localpg::LocalPgError) -> BenchError {
    BenchError::Setup(e.to_string())
}

impl PgCluster {
    /// A throwaway cluster without fsync (`durable`: with fsync and synchronous commit,
    /// for measuring what writers pay).
    pub fn start(durable: bool) -> Result<PgCluster, BenchError> {
        PgCluster::start_with(!durable, "")
    }

    /// A durable cluster with server options `extra` (each ` -c name=value`).
    pub fn start_durable_with(extra: &str) -> Result<PgCluster, BenchError> {
        PgCluster::start_with(false, extra)
    }

    /// A cluster that survives being stopped with `-m immediate`: no fsync (the machine
    /// does not crash, only Postgres), but every commit is written before it is
    /// acknowledged (`synchronous_commit` on), so no acknowledged commit is lost.
    pub fn start_crashable() -> Result<PgCluster, BenchError> {
        PgCluster::start_with(false, " -c fsync=off -c full_page_writes=off")
    }

    fn start_with(throwaway: bool, extra: &str) -> Result<PgCluster, BenchError> {
        let bin = localpg::find_bin(None).map_err(setup)?;
        let as_postgres = localpg::running_as_root();
        let dir = std::env::temp_dir().join(format!("switchboard-bench-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        if as_postgres {
            localpg::give_to_postgres(&dir).map_err(setup)?;
        }
        let data = dir.join("data");
        localpg::initdb(&bin, &data, as_postgres, true).map_err(setup)?;
        let port = free_port()?;
        let opts = format!(
            "{} -c shared_buffers=256MB{extra}",
            localpg::server_options(port, &dir, throwaway, 200)
        );
        let cluster = PgCluster {
            dir,
            bin,
            as_postgres,
            opts,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        };
        cluster.start_again()?;
        crate::pin::postgres(&cluster.dir.join("data"))?;
        Ok(cluster)
    }

    /// The postmaster's pid (the first line of `postmaster.pid`) while it runs.
    pub fn postmaster(&self) -> Option<u32> {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }

    /// `pg_ctl stop -m <mode>` (`fast`: sessions are terminated; `immediate`: a crash,
    /// recovered from the WAL at the next start).
    pub fn stop(&self, mode: &str) -> Result<(), BenchError> {
        let data = self.dir.join("data");
        localpg::pg_ctl(
            &self.bin,
            &data,
            self.as_postgres,
            &["stop", "-w", "-m", mode],
        )
        .map_err(setup)
    }

    /// Starts the (stopped) cluster on its port and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), BenchError> {
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        let log = log.to_string_lossy();
        localpg::pg_ctl(
            &self.bin,
            &data,
            self.as_postgres,
            &["start", "-w", "-t", "60", "-l", &log, "-o", &self.opts],
        )
        .map_err(setup)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = localpg::pg_ctl(
            &self.bin,
            &data,
            self.as_postgres,
            &["stop", "-m", "immediate"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> Result<u16, BenchError> {
    Ok(localpg::free_port()?)
}

/// The hub under test: its address, secret, and pid when this program started it.
pub struct Hub {
    pub addr: SocketAddr,
    pub secret: String,
    pub pid: Option<u32>,
    child: Option<Child>,
}

/// Settings for a hub this program starts (all via the hub's environment variables).
pub struct HubSpec<'a> {
    pub bin: &'a Path,
    pub database_url: Option<&'a str>,
    /// Extra `SWITCHBOARD_*` variables, e.g. larger outboxes.
    pub env: Vec<(String, String)>,
}

impl Hub {
    /// Starts `switchboard serve` on a free loopback port and waits until `/ready` answers.
    pub async fn start(spec: HubSpec<'_>) -> Result<Hub, BenchError> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid address");
        let mut cmd = Command::new(spec.bin);
        cmd.arg("serve")
            .env("SWITCHBOARD_LISTEN", addr.to_string())
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("SWITCHBOARD_MAX_CONNECTIONS", "19000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(url) = spec.database_url {
            cmd.env("DATABASE_URL", url);
        } else {
            cmd.env_remove("DATABASE_URL");
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start {}: {e}", spec.bin.display())))?;
        let hub = Hub {
            addr,
            secret: SECRET.to_owned(),
            pid: Some(child.id()),
            child: Some(child),
        };
        if let Some(pid) = hub.pid {
            crate::pin::hub_side(pid)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(addr, "/ready").await.ok().map(|(c, _)| c) != Some(200) {
            if Instant::now() > deadline {
                return Err(BenchError::Setup("hub not ready within 30 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(hub)
    }

    /// A hub already running at `url` (`ws://host:port` or `http://host:port`).
    pub fn external(url: &str, secret: &str) -> Result<Hub, BenchError> {
        let hostport = url
            .trim_start_matches("ws://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        let addr = hostport.parse().map_err(|_| {
            BenchError::Setup(format!("--hub-url needs host:port with an IP: {url}"))
        })?;
        Ok(Hub {
            addr,
            secret: secret.to_owned(),
            pid: None,
            child: None,
        })
    }

    /// Stops the hub with SIGTERM, as a deploy does (it parks resumable channels and
    /// exits 0).
    pub async fn terminate(mut self) -> Result<(), BenchError> {
        let Some(child) = self.child.take() else {
            return Ok(());
        };
        match stop_child(child, libc::SIGTERM).await {
            Some(status) if status.success() => Ok(()),
            waited => Err(BenchError::Failed(format!(
                "SIGTERM did not end in exit 0 within {STOP_WITHIN:?}: {waited:?}"
            ))),
        }
    }

    /// A service_role token (for admin endpoints such as `/api/status`).
    pub fn admin_token(&self) -> String {
        let exp = chrono::Utc::now().timestamp() + 3600;
        switchboard::auth::mint_hs256(&self.secret, &json!({"role": "service_role", "exp": exp}))
            .expect("mint token")
    }

    /// An `authenticated` token for user `sub`, valid for an hour.
    pub fn token(&self, sub: &str) -> String {
        let exp = chrono::Utc::now().timestamp() + 3600;
        switchboard::auth::mint_hs256(
            &self.secret,
            &json!({"role": "authenticated", "sub": sub, "exp": exp}),
        )
        .expect("mint token")
    }
}

/// How long `stop_child` waits for an exit before it kills.
pub const STOP_WITHIN: Duration = Duration::from_secs(20);

/// Sends `signal` (`libc::SIGTERM` or `SIGKILL`) to `child` and waits up to `STOP_WITHIN`
/// for its exit status; after that kills it and gives `None`.
pub async fn stop_child(mut child: Child, signal: i32) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + STOP_WITHIN;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    })
    .await
    .ok()
    .flatten()
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A bare HTTP/1.0 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), std::io::Error> {
    http_get_as(addr, path, None).await
}

/// GET `path`, with `Authorization: Bearer <token>` when given.
pub async fn http_get_as(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), std::io::Error> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((code, body))
}
