//! The `switchboard` command: serve, migrate, enable, disable, token, dev, webhooks.

mod dev;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use switchboard::config::{webhooks_from_file, webhooks_toml, Config, Settings};
use switchboard::consumers::{admin, EndpointStatus, Operation};
use switchboard::{auth, db, telemetry};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Realtime hub for Postgres-backed apps (Supabase Realtime protocol)"
)]
struct Cli {
    /// TOML settings file (keys as in the README's configuration table).
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve,
    /// Local Postgres in ./.switchboard, demo CRM with row-level security, and the hub.
    Dev,
    /// Apply pending SQL migrations (schema `realtime`).
    Migrate,
    /// Capture changes of a table: `switchboard enable public.deals`.
    Enable { table: String },
    /// Stop capturing changes of a table.
    Disable { table: String },
    /// Print the effective configuration (file < env < flags, defaults filled in).
    Config,
    /// Exit 0 if `GET <url>` answers 2xx (a health check for images without curl).
    Probe {
        #[arg(default_value = "http://127.0.0.1:4000/ready")]
        url: String,
    },
    /// Operate webhook endpoints (defined with realtime.create_webhook or in the config
    /// file); a running hub notices within a second.
    Webhooks {
        #[command(subcommand)]
        action: WebhooksCommand,
    },
    /// Print a JWT signed with the configured secret.
    Token {
        /// The `role` claim [default: the role in --claims, else authenticated].
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        sub: Option<String>,
        /// Extra claims as a JSON object, merged in.
        #[arg(long)]
        claims: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        exp: i64,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Every endpoint: state, cursor, lag, last success, last error, lost data.
    List {
        /// Print JSON (the same fields as /api/status).
        #[arg(long)]
        json: bool,
    },
    /// Stop delivering; nothing is dropped (the cursor stays where it is).
    Pause { name: String },
    /// Deliver again from the stored cursor.
    Resume { name: String },
    /// Try the pending batch now instead of after the backoff (resumes a paused endpoint).
    Retry { name: String },
    /// Deliver again every change committed at or after a time still in the log (also
    /// clears the lost-data mark). Receivers see those events with their original ids.
    Replay {
        name: String,
        /// RFC 3339, e.g. 2024-05-01T12:00:00Z.
        #[arg(long)]
        from: String,
    },
    /// Print the endpoint's signing secret (whsec_...).
    Secret { name: String },
}
/// Where `switchboard dev` listens unless told otherwise: loopback only, because it
/// prints tokens signed with its development secret.
const DEV_LISTEN: &str = "127.0.0.1:4000";

fn load_config(cli: &Cli) -> Result<Config> {
    let file = match &cli.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let mut settings = cli.settings.clone().merge(file);
    if matches!(cli.command, Command::Dev) && settings.listen.is_none() {
        settings.listen = Some(DEV_LISTEN.into());
    }
    let mut config = Config::from_settings(settings)?;
    if let Some(path) = &cli.config {
        config.webhooks = webhooks_from_file(path)?;
    }
    Ok(config)
}

async fn webhooks(config: &Config, action: &WebhooksCommand) -> Result<()> {
    let (client, _conn) = db::connect(database_url(config)?).await?;
    let migrated: bool = client
        .query_one(
            "select pg_catalog.to_regclass('realtime.webhook_endpoints') is not null",
            &[],
        )
        .await?
        .get(0);
    if !migrated {
        anyhow::bail!(
            "this database has no webhooks yet: its realtime schema is not set up; run `switchboard migrate` (or `serve`) first"
        );
    }
    let (name, op) = match action {
        WebhooksCommand::List { json } => {
            let list = admin::list(&client, None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!(
                    "no webhook endpoints (create one with select realtime.create_webhook(...))"
                );
            } else {
                for s in &list {
                    print_endpoint(s);
                }
            }
            return Ok(());
        }
        WebhooksCommand::Secret { name } => {
            println!("{}", admin::secret(&client, name).await?);
            return Ok(());
        }
        WebhooksCommand::Pause { name } => (name, Operation::Pause),
        WebhooksCommand::Resume { name } => (name, Operation::Resume),
        WebhooksCommand::Retry { name } => (name, Operation::Retry),
        WebhooksCommand::Replay { name, from } => {
            let from = chrono::DateTime::parse_from_rfc3339(from.trim())
                .with_context(|| {
                    format!("--from {from:?} is not a time like 2024-05-01T12:00:00Z")
                })?
                .with_timezone(&chrono::Utc);
            (name, Operation::Replay { from })
        }
    };
    let position = admin::apply(&client, name, &op).await?;
    match position {
        Some(p) => println!("{name}: replaying from position {p}"),
        None => println!("{name}: {}", op.name()),
    }
    if let Some(s) = admin::list(&client, Some(name)).await?.first() {
        print_endpoint(s);
    }
    Ok(())
}

fn print_endpoint(s: &EndpointStatus) {
    let time = |t: &Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("never".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        })
    };
    println!(
        "{}  [{}]  {}  {}  ({})",
        s.name,
        s.state,
        s.url,
        s.tables.join(","),
        s.events.join(",")
    );
    if let Some(reason) = &s.paused_reason {
        println!("  paused: {reason}");
    }
    if s.data_lost {
        println!(
            "  DATA LOST at {}: the log was pruned past this endpoint's cursor",
            time(&s.data_lost_at)
        );
    }
    println!(
        "  lag {} events, {:.1} s  delivered {}  attempts {}  failures in a row {}",
        s.lag_events, s.lag_seconds, s.delivered, s.attempts, s.failures
    );
    println!(
        "  last success {}  delivered by {}",
        time(&s.last_success_at),
        s.lease_owner.as_deref().unwrap_or("no hub")
    );
    if let Some(e) = &s.last_error {
        let status = s
            .last_status
            .map(|c| format!(" (HTTP {c})"))
            .unwrap_or_default();
        println!("  last error{status} at {}: {e}", time(&s.last_error_at));
    }
    println!("  cursor {}", s.cursor);
}

fn database_url(config: &Config) -> Result<&str> {
    config
        .database_url
        .as_deref()
        .context("DATABASE_URL is not set (or database_url in the config file)")
}

/// The admin connection (`migrate_database_url`), else `database_url`.
fn admin_url(config: &Config) -> Result<&str> {
    match &config.migrate_database_url {
        Some(url) => Ok(url),
        None => database_url(config),
    }
}

/// Applies migrations (with the admin url when one is set) and grants the hub's rights
/// to the user of `database_url`, then says what that user can reach.
async fn migrate(config: &Config) -> Result<()> {
    let hub_url = database_url(config)?;
    let applied = db::migrate_for_hub(admin_url(config)?, hub_url).await?;
    println!("applied migrations: {applied:?}");
    let (client, _conn) = db::connect(hub_url).await?;
    let access = db::hub_access(&client, &config.allowed_roles).await?;
    if access.superuser {
        println!(
            "the hub connects as {:?}, a superuser: a token's role is the only limit \
             (see the README, \"Running as a non-superuser\")",
            access.user
        );
    } else {
        println!("the hub connects as {:?} (not a superuser)", access.user);
    }
    if !access.unavailable.is_empty() {
        println!(
            "{:?} is not a member of {}: tokens naming them are refused \
             (grant them to it, or remove them from allowed_roles)",
            access.user,
            access.unavailable.join(", ")
        );
    }
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    let listener = switchboard::server::listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining connections");
        signal_token.cancel();
    });
    switchboard::run(config, listener, shutdown).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn mint(
    config: &Config,
    role: Option<&str>,
    sub: Option<&str>,
    claims: Option<&str>,
    exp: i64,
) -> Result<String> {
    let secret = config
        .jwt_secret
        .as_deref()
        .context("SWITCHBOARD_JWT_SECRET is not set (or jwt_secret in the config file)")?;
    let mut body = serde_json::Map::new();
    if let Some(extra) = claims {
        let extra: serde_json::Value =
            serde_json::from_str(extra).context("--claims must be a JSON object")?;
        let Some(extra) = extra.as_object() else {
            bail!("--claims must be a JSON object");
        };
        body.extend(extra.clone());
    }
    match role {
        Some(role) => {
            body.insert("role".into(), role.into());
        }
        None => {
            body.entry("role").or_insert("authenticated".into());
        }
    }
    if let Some(sub) = sub {
        body.insert("sub".into(), sub.into());
    }
    let now = chrono::Utc::now().timestamp();
    body.insert("iat".into(), now.into());
    body.insert("exp".into(), (now + exp).into());
    Ok(auth::mint_hs256(secret, &serde_json::Value::Object(body))?)
}

/// A bare HTTP/1.0 GET of `http://host:port/path`, enough for a container health check.
async fn probe(url: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("probe takes an http:// URL")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .context("probe timed out")??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if code.starts_with('2') {
        println!("{url}: {code}");
        Ok(())
    } else {
        bail!(
            "{url}: {}",
            status_line.lines().next().unwrap_or("no answer")
        )
    }
}

/// Exits for a command line clap refused. A bad value that came from an environment
/// variable is named by that variable, not only by the flag.
fn exit_naming_env(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    let invalid = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let from_env = match (e.kind(), invalid(ContextKind::InvalidArg)) {
        (ErrorKind::ValueValidation | ErrorKind::InvalidValue, Some(arg)) => {
            let flag = arg
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            let value = invalid(ContextKind::InvalidValue);
            let command = Cli::command();
            let args = command
                .get_arguments()
                .chain(command.get_subcommands().flat_map(|c| c.get_arguments()));
            let env = args
                .filter(|a| a.get_long().is_some_and(|l| flag == format!("--{l}")))
                .find_map(|a| a.get_env().map(|v| v.to_string_lossy().into_owned()));
            // Named when the refused value is the variable's.
            env.filter(|v| value.is_some() && std::env::var(v).ok() == value)
        }
        _ => None,
    };
    match from_env {
        Some(var) => {
            let text = e.render().to_string();
            let text = text.trim_end().trim_start_matches("error: ");
            eprintln!("error: {var}: {text}");
            std::process::exit(2);
        }
        None => e.exit(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::try_parse().unwrap_or_else(|e| exit_naming_env(e));
    if !matches!(cli.command, Command::Serve | Command::Dev) {
        // A one-shot command piped into `head` ends quietly when the pipe closes, as
        // other command-line tools do, instead of panicking in `println!`. (The hub
        // itself keeps SIGPIPE ignored: a closed socket is an error it handles.)
        // SAFETY: signal() only sets the process-wide disposition of SIGPIPE; sockets
        // are written with MSG_NOSIGNAL, so only stdout and stderr see the default.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let config = load_config(&cli)?;
    telemetry::init_logging(config.log_format);
    match &cli.command {
        Command::Serve => serve(config).await,
        Command::Dev => dev::run(config).await,
        Command::Migrate => migrate(&config).await,
        Command::Enable { table } => {
            let (client, _conn) = db::connect(admin_url(&config)?).await?;
            db::migrate(&client).await?;
            db::enable(&client, table).await?;
            println!("realtime enabled for {table}");
            Ok(())
        }
        Command::Disable { table } => {
            let (client, _conn) = db::connect(admin_url(&config)?).await?;
            match db::disable(&client, table).await? {
                None => println!("realtime disabled for {table}"),
                Some(why) => println!("realtime stays enabled for {table}: {why}"),
            }
            Ok(())
        }
        Command::Probe { url } => probe(url).await,
        Command::Webhooks { action } => webhooks(&config, action).await,
        Command::Config => {
            let (file, declared) = match &cli.config {
                Some(path) => (Settings::from_file(path)?, webhooks_from_file(path)?),
                None => (Settings::default(), Vec::new()),
            };
            print!("{}", cli.settings.clone().merge(file).effective_toml());
            let declared = webhooks_toml(&declared);
            if !declared.is_empty() {
                print!("\n{declared}");
            }
            Ok(())
        }
        Command::Token {
            role,
            sub,
            claims,
            exp,
        } => {
            println!(
                "{}",
                mint(
                    &config,
                    role.as_deref(),
                    sub.as_deref(),
                    claims.as_deref(),
                    *exp
                )?
            );
            Ok(())
        }
    }
}
