//! `switchboard-bench`: load scenarios against a running (or self-started) hub, each
//! printing a one-line summary and a JSON record. See BENCHMARKS.md.

mod changes;
mod chaos;
mod cluster;
mod decoded;
mod env;
mod fanout;
mod floor;
mod idle;
mod nullhub;
mod pgload;
mod pin;
mod resume;
mod rss;
mod run;
mod stats;
mod webhooks;
mod writeload;
mod ws;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("setup: {0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(String),
    #[error("postgres: {0}")]
    Pg(#[from] tokio_postgres::Error),
    #[error("database: {0}")]
    Db(#[from] switchboard::db::DbError),
    /// The scenario ran and found what it checks for violated.
    #[error("{0}")]
    Failed(String),
}

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    about = "Load scenarios for the switchboard hub"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario shares.
#[derive(Args, Clone)]
pub struct Common {
    /// The hub binary to start (default: `switchboard` next to this program).
    #[arg(long)]
    pub hub_bin: Option<PathBuf>,
    /// Use a hub that is already running (`ws://127.0.0.1:4000`) instead of starting one.
    #[arg(long)]
    pub hub_url: Option<String>,
    /// HS256 secret of the `--hub-url` hub.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", default_value = env::SECRET)]
    pub secret: String,
    /// Postgres to use (superuser); default: a throwaway cluster.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Length of each measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Sockets opened concurrently during setup.
    #[arg(long, default_value_t = 200)]
    pub parallel: usize,
    /// Extra hub settings for a hub this program starts, `NAME=value` (repeatable).
    #[arg(long = "hub-env", value_parser = parse_kv)]
    pub hub_env: Vec<(String, String)>,
    /// Run the hub and Postgres (and the null hub, floor or Redis) on one half of the
    /// CPUs and this load generator on the other (with 2 CPUs: 0 and 1).
    #[arg(long)]
    pub pin: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=value, got {s}"))
}

#[derive(Subcommand)]
enum Scenario {
    /// One writer table, N subscribers: latency at a fixed rate, saturation, null hub ratio.
    Fanout(fanout::FanoutArgs),
    /// Portal customers each filtered to their own rows with RLS on; random updates.
    Rowscoped(changes::RowscopedArgs),
    /// C channels x M members, each member broadcasting R messages per second.
    Broadcast(fanout::BroadcastArgs),
    /// Broadcast with members spread over two nodes (Redis) vs all on one node.
    Cluster(cluster::ClusterArgs),
    /// N idle sockets: hub RSS and kernel socket memory per connection.
    Idle(idle::IdleArgs),
    /// A presence and broadcast flood, then RSS at rest: baseline, peak, a minute after.
    Rss(rss::RssArgs),
    /// Writers at the maximum commit rate: committed/s, delivered/s and lag.
    Capture(changes::CaptureArgs),
    /// What capture costs writers: plain vs captured vs notify-trigger tables, fsync on.
    Writeload(writeload::WriteloadArgs),
    /// Commit-to-client latency: the hub against a minimal LISTEN/NOTIFY forwarder.
    Floor(floor::FloorArgs),
    /// The hub in a hostile world: faults, floods and a verdict on every subscriber.
    Chaos(chaos::ChaosArgs),
    /// A reconnect storm of resumable portal customers: gaps replayed from memory vs the log.
    Resume(resume::ResumeArgs),
    /// Webhook delivery: events/s to a local receiver, insert-to-receipt latency, CPU/event.
    Webhooks(webhooks::WebhooksArgs),
    /// The null hub (started by fanout and broadcast; can be run by hand).
    Nullhub {
        #[arg(long, default_value = "127.0.0.1:4999")]
        listen: std::net::SocketAddr,
    },
    /// The floor's LISTEN/NOTIFY forwarder (started by `floor`).
    #[command(hide = true)]
    FloorServe {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        database_url: String,
    },
    /// A share of the idle sockets, in a child process (used by `idle --procs`).
    #[command(hide = true)]
    IdleChild(idle::ChildArgs),
}

impl Scenario {
    fn common(&self) -> Option<&Common> {
        match self {
            Scenario::Fanout(a) => Some(&a.common),
            Scenario::Rowscoped(a) => Some(&a.common),
            Scenario::Broadcast(a) => Some(&a.common),
            Scenario::Cluster(a) => Some(&a.common),
            Scenario::Idle(a) => Some(&a.common),
            Scenario::Capture(a) => Some(&a.common),
            Scenario::Writeload(a) => Some(&a.common),
            Scenario::Floor(a) => Some(&a.common),
            Scenario::Chaos(a) => Some(&a.common),
            Scenario::Resume(a) => Some(&a.common),
            Scenario::Rss(a) => Some(&a.common),
            Scenario::Webhooks(a) => Some(&a.common),
            Scenario::Nullhub { .. } | Scenario::FloorServe { .. } | Scenario::IdleChild(_) => None,
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if cli.scenario.common().is_some_and(|c| c.pin) {
        if let Err(e) = pin::enable() {
            eprintln!("switchboard-bench: {e}");
            std::process::exit(1);
        }
    }
    let result = match cli.scenario {
        Scenario::Fanout(a) => fanout::fanout(a).await,
        Scenario::Rowscoped(a) => changes::rowscoped(a).await,
        Scenario::Broadcast(a) => fanout::broadcast(a).await,
        Scenario::Cluster(a) => cluster::cluster(a).await,
        Scenario::Idle(a) => idle::idle(a).await,
        Scenario::Capture(a) => changes::capture(a).await,
        Scenario::Rss(a) => rss::rss(a).await,
        Scenario::Writeload(a) => writeload::writeload(a).await,
        Scenario::Floor(a) => floor::floor(a).await,
        Scenario::Webhooks(a) => webhooks::webhooks(a).await,
        Scenario::Chaos(a) => chaos::chaos(a).await,
        Scenario::Resume(a) => resume::resume(a).await,
        Scenario::Nullhub { listen } => nullhub::serve(listen).await,
        Scenario::FloorServe {
            listen,
            database_url,
        } => floor::serve(listen, database_url).await,
        Scenario::IdleChild(a) => idle::child(a).await,
    };
    if let Err(e) = result {
        eprintln!("switchboard-bench: {e}");
        std::process::exit(1);
    }
}

/// The database and hub a scenario runs against; both are stopped on drop.
pub struct Setup {
    pub hub: env::Hub,
    pub database_url: Option<String>,
    _pg: Option<env::PgCluster>,
}

impl Setup {
    /// The pid of the cluster this program started (`None` with `--database-url`).
    pub fn postmaster(&self) -> Option<u32> {
        self._pg.as_ref().and_then(|pg| pg.postmaster())
    }
}

impl Common {
    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.duration)
    }

    /// The hub binary: `--hub-bin`, or `switchboard` next to this program.
    pub fn hub_bin(&self) -> Result<PathBuf, BenchError> {
        Ok(match &self.hub_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("switchboard"),
        })
    }

    /// `--database-url`, or a throwaway cluster (fsync off) kept while the guard lives.
    pub async fn database(&self) -> Result<(Option<env::PgCluster>, String), BenchError> {
        Ok(match &self.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let pg = tokio::task::spawn_blocking(|| env::PgCluster::start(false))
                    .await
                    .map_err(|e| BenchError::Setup(e.to_string()))??;
                let url = pg.url.clone();
                (Some(pg), url)
            }
        })
    }

    /// A durable Postgres (fsync on; or `--database-url`), migrated, and the hub on it.
    pub async fn setup_durable(&self) -> Result<Setup, BenchError> {
        self.setup_durable_with("").await
    }

    /// As `setup_durable`, the cluster started with server options `extra` (` -c a=b`);
    /// a `--database-url` cluster must already have them.
    pub async fn setup_durable_with(&self, extra: &'static str) -> Result<Setup, BenchError> {
        let (pg, url) = match &self.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let pg =
                    tokio::task::spawn_blocking(move || env::PgCluster::start_durable_with(extra))
                        .await
                        .map_err(|e| BenchError::Setup(e.to_string()))??;
                let url = pg.url.clone();
                (Some(pg), url)
            }
        };
        switchboard::db::migrate(&pgload::connect(&url).await?).await?;
        let hub = self.start_hub(Some(&url), Vec::new()).await?;
        Ok(Setup {
            hub,
            database_url: Some(url),
            _pg: pg,
        })
    }

    async fn start_hub(
        &self,
        database_url: Option<&str>,
        hub_env: Vec<(&'static str, String)>,
    ) -> Result<env::Hub, BenchError> {
        match &self.hub_url {
            Some(url) => env::Hub::external(url, &self.secret),
            None => {
                self.start_hub_bin(&self.hub_bin()?, database_url, hub_env)
                    .await
            }
        }
    }

    /// Starts hub binary `bin` on `database_url` with `hub_env` and `--hub-env`.
    pub async fn start_hub_bin(
        &self,
        bin: &std::path::Path,
        database_url: Option<&str>,
        hub_env: Vec<(&'static str, String)>,
    ) -> Result<env::Hub, BenchError> {
        let mut all_env: Vec<(String, String)> = hub_env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        all_env.extend(self.hub_env.iter().cloned());
        env::Hub::start(env::HubSpec {
            bin,
            database_url,
            env: all_env,
        })
        .await
    }

    /// Starts (or reaches) Postgres when `with_db`, prepares the bench schema with
    /// `customers` portal customers, then starts (or reaches) the hub with `hub_env`.
    pub async fn setup(
        &self,
        with_db: bool,
        customers: usize,
        hub_env: Vec<(&'static str, String)>,
    ) -> Result<Setup, BenchError> {
        let (pg, database_url) = match with_db {
            false => (None, None),
            true => {
                let (pg, url) = self.database().await?;
                (pg, Some(url))
            }
        };
        if let Some(url) = &database_url {
            pgload::setup(url, customers).await?;
        }
        let hub = self.start_hub(database_url.as_deref(), hub_env).await?;
        Ok(Setup {
            hub,
            database_url,
            _pg: pg,
        })
    }
}
