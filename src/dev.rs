//! `switchboard dev`: a local Postgres in `./.switchboard/` (initdb on first run), the
//! migrations and the demo CRM, then the hub; Ctrl-C stops both. Binary-only module.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use switchboard::config::Config;
use switchboard::{auth, db, localpg};

const DEMO_SQL: &str = include_str!("../sql/demo/crm.sql");
const STAFF_ID: &str = "00000000-0000-4000-8000-000000000001";
const CUSTOMERS: [(&str, &str); 2] = [
    ("Ada", "11111111-1111-4111-8111-111111111111"),
    ("Bo", "22222222-2222-4222-8222-222222222222"),
];

/// Can the `postgres` user reach `dir` (every ancestor searchable)?
fn postgres_can_enter(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A stable, dependency-free hash of a path (FNV-1a), for naming a folder.
fn path_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Runs the local Postgres cluster of `dir` and stops it when dropped.
struct LocalPostgres {
    /// `postgres`, or `runuser` running it (as root).
    child: Child,
    data: PathBuf,
}

impl LocalPostgres {
    fn start(dir: &Path, port: u16) -> Result<LocalPostgres> {
        let bin = localpg::find_bin(None)?;
        let as_postgres = localpg::running_as_root();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut dir = dir.canonicalize()?;
        if as_postgres && !postgres_can_enter(&dir) {
            // As root in a private folder (e.g. /root/app) the postgres user cannot reach
            // ./.switchboard; keep the cluster where it can, one per project folder.
            let id = format!("{:x}", path_hash(&dir.to_string_lossy()));
            let alt = PathBuf::from("/var/lib/postgresql/switchboard-dev").join(id);
            std::fs::create_dir_all(&alt)?;
            eprintln!(
                "note: the postgres user cannot enter {}; keeping the dev cluster in {}",
                dir.display(),
                alt.display()
            );
            dir = alt;
        }
        let data = dir.join("pgdata");
        if as_postgres {
            localpg::give_to_postgres(&dir)?;
        }
        if !data.join("PG_VERSION").exists() {
            eprintln!("initializing a local Postgres in {}", data.display());
            localpg::initdb(&bin, &data, as_postgres, false)?;
        }
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        let child = localpg::command(&bin, "postgres", as_postgres)
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        Ok(LocalPostgres { child, data })
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGINT = Postgres "fast" shutdown: disconnect clients, checkpoint, exit. Signal
        // the postmaster itself (from postmaster.pid): runuser does not forward SIGINT.
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_else(|| self.child.id().to_string());
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let _ = self.child.wait();
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_for_postgres(url: &str) -> Result<()> {
    for _ in 0..100 {
        if db::connect(url).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the local Postgres did not accept connections (see .switchboard/postgres.log)")
}

fn dev_secret(dir: &Path, config: &Config) -> Result<String> {
    if let Some(s) = &config.jwt_secret {
        return Ok(s.clone());
    }
    let path = dir.join("jwt_secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_owned());
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, &secret)?;
    Ok(secret)
}

fn token(secret: &str, claims: serde_json::Value) -> Result<String> {
    let mut claims = claims;
    let exp = chrono::Utc::now().timestamp() + 24 * 3600;
    claims["exp"] = exp.into();
    Ok(auth::mint_hs256(secret, &claims)?)
}

/// Sets up the local database and demo data, then serves until Ctrl-C.
pub async fn run(mut config: Config) -> Result<()> {
    let dir = PathBuf::from(".switchboard");
    let pg_port = config.dev_pg_port;
    let mut pg = LocalPostgres::start(&dir, pg_port)?;
    let admin_url = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
    wait_for_postgres(&admin_url).await?;
    let (admin, _conn) = db::connect(&admin_url).await?;
    // Another Postgres on the port (a dev left running, another project's) would answer
    // while ours failed to start: never load the demo into it.
    let serving: String = admin.query_one("show data_directory", &[]).await?.get(0);
    let ours = std::fs::canonicalize(&pg.data).unwrap_or_else(|_| pg.data.clone());
    if std::fs::canonicalize(&serving).unwrap_or_else(|_| PathBuf::from(&serving)) != ours {
        bail!(
            "another Postgres (data directory {serving}) is listening on port {pg_port}, so the \
             local one in {} could not start: stop it, or set dev_pg_port \
             (SWITCHBOARD_DEV_PG_PORT) to a free port",
            ours.display()
        );
    }
    let exists = admin
        .query_opt(
            "select 1 from pg_database where datname = 'switchboard'",
            &[],
        )
        .await?
        .is_some();
    if !exists {
        admin.batch_execute("create database switchboard").await?;
    }
    let url = format!("postgres://postgres@127.0.0.1:{pg_port}/switchboard");
    let (client, _conn) = db::connect(&url).await?;
    db::migrate(&client).await?;
    client
        .batch_execute(DEMO_SQL)
        .await
        .context("loading the demo CRM")?;

    let secret_from_file = config.jwt_secret.is_none();
    let secret = dev_secret(&dir, &config)?;
    config.jwt_secret = Some(secret.clone());
    config.database_url = Some(url.clone());
    let listener = switchboard::server::listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let anon = token(&secret, json!({ "role": "anon" }))?;
    let staff = token(
        &secret,
        json!({ "role": "authenticated", "sub": STAFF_ID, "app_role": "staff" }),
    )?;
    println!("\nSwitchboard dev is running.\n");
    println!(
        "  WebSocket   ws://{host}:{}/realtime/v1/websocket",
        addr.port()
    );
    println!("  Database    {url}");
    println!("  anon key    {anon}");
    println!("  staff token {staff}");
    let service = token(&secret, json!({ "role": "service_role" }))?;
    if config.inspector {
        println!(
            "  Inspector   http://{host}:{}/inspector  (sign in with the service role token)",
            addr.port()
        );
    }
    println!("  service role {service}");
    if secret_from_file {
        // For the CLI beside the hub: `switchboard token` signs with this secret, and
        // `switchboard webhooks …`, `enable` and `migrate` connect to this database.
        println!(
            "  CLI         export SWITCHBOARD_JWT_SECRET=$(cat {}) DATABASE_URL={url}",
            dir.join("jwt_secret").display()
        );
    }
    for (name, id) in CUSTOMERS {
        let t = token(&secret, json!({ "role": "authenticated", "sub": id }))?;
        println!("  customer {name} ({id})\n              {t}");
    }
    println!(
        "\nsupabase-js (a customer's portal):\n\n  \
         import {{ createClient }} from '@supabase/supabase-js'\n  \
         import WebSocket from 'ws'   // Node 20 has no WebSocket (npm i ws); leave out in browsers\n  \
         const supabase = createClient('http://{host}:{port}', '{anon}', {{\n    \
         accessToken: async () => '<a customer token above>', realtime: {{ transport: WebSocket }} }})\n  \
         await supabase.realtime.setAuth()   // send the token with the first join\n  \
         supabase.channel('portal')\n    \
         .on('postgres_changes', {{ event: '*', schema: 'public', table: 'jobs' }}, (p) => console.log(p))\n    \
         .subscribe()\n\n\
         Then change a row: psql {url} -c \"update jobs set status = 'done'\"\n\
         Ctrl-C stops the hub and Postgres.\n",
        port = addr.port()
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::wait_for_signal().await;
        signal.cancel();
    });
    let result = switchboard::run(config, listener, shutdown).await;
    drop(client);
    drop(admin);
    pg.stop();
    result.map_err(Into::into)
}
