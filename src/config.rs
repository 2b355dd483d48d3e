//! Settings from a TOML file, the environment and flags, merged in that order of
//! precedence (file < env < flag) and validated once into a `Config`. Nothing else in
//! the crate reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Declares the settings once: each becomes an optional TOML key, an environment variable
/// and a `--flag`, plus a typed field of `Config` with its default.
macro_rules! settings {
    ($( $(#[$doc:meta])* $key:ident : $ty:ty = $default:expr, env $env:literal; )*) => {
        /// Raw, unvalidated settings; every key optional. Flags and env come from clap,
        /// the file from serde; `merge` layers them.
        #[derive(Debug, Default, Clone, Deserialize, serde::Serialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $( $(#[$doc])* #[arg(long, global = true, env = $env)] #[serde(skip_serializing_if = "Option::is_none")] pub $key: Option<$ty>, )*
        }

        impl Settings {
            /// Fills every unset key of `self` from `lower`.
            pub fn merge(self, lower: Settings) -> Settings {
                Settings { $( $key: self.$key.or(lower.$key), )* }
            }

            /// Every key set: unset ones get their defaults.
            pub fn with_defaults(self) -> Settings {
                Settings { $( $key: Some(self.$key.unwrap_or_else(|| $default)), )* }
            }
        }

        /// Every setting with its default applied (before validation).
        #[derive(Debug, Clone)]
        struct Resolved { $( $key: $ty, )* }

        impl Resolved {
            fn from(s: Settings) -> Resolved {
                Resolved { $( $key: s.$key.unwrap_or_else(|| $default), )* }
            }
        }

        /// One row per setting: (key, env var, default), for the README table and `--help`.
        pub const SETTINGS_TABLE: &[(&str, &str, &str)] = &[
            $( (stringify!($key), $env, stringify!($default)), )*
        ];
    };
}

settings! {
    /// Address the HTTP/WebSocket server binds (`switchboard dev`: `127.0.0.1:4000` unless set, since it prints tokens signed with its dev secret).
    listen: String = "0.0.0.0:4000".into(), env "SWITCHBOARD_LISTEN";
    /// Address for `/metrics` alone (e.g. `127.0.0.1:9400`); empty serves it on `listen`.
    metrics_listen: String = String::new(), env "SWITCHBOARD_METRICS_LISTEN";
    /// Postgres connection string; without it postgres_changes is unavailable.
    database_url: String = String::new(), env "DATABASE_URL";
    /// Admin connection string for migrations (`migrate`, and `serve` when `auto_migrate`); the hub then grants its runtime rights to `database_url`'s user, which needs no other rights (see "Running as a non-superuser"). Empty: migrations use `database_url`.
    migrate_database_url: String = String::new(), env "SWITCHBOARD_MIGRATE_DATABASE_URL";
    /// HS256/384/512 secret for client JWTs.
    jwt_secret: String = String::new(), env "SWITCHBOARD_JWT_SECRET";
    /// JWKS (RS/PS, ES256/384, EdDSA keys): a file path, or an `http(s)://` URL such as a Supabase project's `https://<ref>.supabase.co/auth/v1/.well-known/jwks.json`. Read at start (the start fails when it cannot be), again every `jwks_refresh_secs`, and at once for a token whose `kid` no key has (at most once per 10 s); a failed read keeps the keys the hub has.
    jwks: String = String::new(), env "SWITCHBOARD_JWKS";
    /// Opaque Supabase API keys accepted in place of a JWT (as `apikey`, a REST bearer, or an admin credential), comma-separated `<key>=<role>` pairs such as `sb_publishable_…=anon,sb_secret_…=service_role`: each stands for a token of its role, as Supabase's gateway turns it into one. Each key starts with `sb_`; each role is one of `allowed_roles`.
    api_keys: String = String::new(), env "SWITCHBOARD_API_KEYS";
    /// Seconds between reads of the JWKS (keys rotated in or withdrawn are seen without a restart); 0 reads it only at start and for unknown kids.
    jwks_refresh_secs: u64 = 300, env "SWITCHBOARD_JWKS_REFRESH_SECS";
    /// Postgres roles a token may name, comma-separated; any other role is refused at connect and at join.
    allowed_roles: String = "anon,authenticated,service_role".into(), env "SWITCHBOARD_ALLOWED_ROLES";
    /// Seconds a token's `nbf` (not before) may lie in the future, for clock skew.
    jwt_nbf_leeway_secs: u64 = 30, env "SWITCHBOARD_JWT_NBF_LEEWAY_SECS";
    /// Maximum concurrent WebSocket connections.
    max_connections: usize = 18_000, env "SWITCHBOARD_MAX_CONNECTIONS";
    /// Largest inbound WebSocket message, in bytes.
    max_frame_bytes: usize = 5_000_000, env "SWITCHBOARD_MAX_FRAME_BYTES";
    /// Channels one connection may join.
    max_channels_per_connection: usize = 100, env "SWITCHBOARD_MAX_CHANNELS_PER_CONNECTION";
    /// postgres_changes entries one join may carry; more refuse the join.
    max_changes_per_join: usize = 100, env "SWITCHBOARD_MAX_CHANGES_PER_JOIN";
    /// postgres_changes entries one connection may hold over all its channels; a join past it is refused.
    max_changes_per_connection: usize = 500, env "SWITCHBOARD_MAX_CHANGES_PER_CONNECTION";
    /// `like`/`ilike`/`match`/`imatch` work one connection's filters may take per change on the shared dispatch path, counted as (pattern length + 1) × text bytes per filter; past it, its remaining filters for that change are judged on a separate lane and only that connection's frames wait. 0 sends every `like` to the lane.
    filter_inline_cost: u64 = 65_536, env "SWITCHBOARD_FILTER_INLINE_COST";
    /// Joins per second per connection (burst of the same size).
    max_joins_per_second: u32 = 100, env "SWITCHBOARD_MAX_JOINS_PER_SECOND";
    /// Client messages per second per connection (heartbeats excluded), on average: a burst may spend five seconds' worth at once (Supabase averages over 5-second buckets), one more message past that shuts the channel with `Too many messages per second`.
    max_messages_per_second: u32 = 100, env "SWITCHBOARD_MAX_MESSAGES_PER_SECOND";
    /// Largest broadcast payload, in bytes.
    max_broadcast_bytes: usize = 256 * 1024, env "SWITCHBOARD_MAX_BROADCAST_BYTES";
    /// Largest presence track payload, in bytes (Supabase checks a track as a broadcast: 256 KB on its free plan); a larger one shuts the channel with `Track message size exceeded`.
    max_presence_bytes: usize = 256 * 1024, env "SWITCHBOARD_MAX_PRESENCE_BYTES";
    /// Presence messages (track, untrack) one channel may send per `presence_window_ms`, as Supabase counts them; one more shuts the channel with `Client presence rate limit exceeded`. 0: no limit.
    presence_calls_per_window: u32 = 5, env "SWITCHBOARD_PRESENCE_CALLS_PER_WINDOW";
    /// The window of `presence_calls_per_window`, in milliseconds (it starts at a channel's first presence message after the last one ended).
    presence_window_ms: u64 = 30_000, env "SWITCHBOARD_PRESENCE_WINDOW_MS";
    /// Presences one topic may hold (over all nodes); a track of a new one past it gets an error reply.
    max_presences_per_topic: usize = 10_000, env "SWITCHBOARD_MAX_PRESENCES_PER_TOPIC";
    /// Bytes of presence state one topic may hold (payloads, keys and refs); a track past it gets an error reply. At most `outbox_bytes`.
    max_presence_bytes_per_topic: usize = 4 * 1024 * 1024, env "SWITCHBOARD_MAX_PRESENCE_BYTES_PER_TOPIC";
    /// Frames queued for one connection before it is cut off as a slow consumer.
    outbox_frames: usize = 4096, env "SWITCHBOARD_OUTBOX_FRAMES";
    /// Bytes queued for one connection before it is cut off as a slow consumer.
    outbox_bytes: usize = 8 * 1024 * 1024, env "SWITCHBOARD_OUTBOX_BYTES";
    /// How long a connection's queue may stay past `outbox_frames`/`outbox_bytes` (up to 16 times the frames and 4 times the bytes) when a large transaction's changes arrive at once; still past them after this, or past those ceilings, it is cut off as a slow consumer. 0: cut off at the bounds.
    outbox_grace_ms: u64 = 10_000, env "SWITCHBOARD_OUTBOX_GRACE_MS";
    /// REST broadcast messages per second per token (burst of the same size); past it, 429.
    rest_broadcasts_per_second_per_token: u32 = 1000, env "SWITCHBOARD_REST_BROADCASTS_PER_SECOND_PER_TOKEN";
    /// REST broadcast messages per second per client address (IPv6: per /64; burst of the same size); past it, 429.
    rest_broadcasts_per_second_per_address: u32 = 1000, env "SWITCHBOARD_REST_BROADCASTS_PER_SECOND_PER_ADDRESS";
    /// Take a REST caller's address from the last `X-Forwarded-For` entry (the one the proxy in front of the hub appended) instead of the TCP peer. Only behind such a proxy.
    trust_x_forwarded_for: bool = false, env "SWITCHBOARD_TRUST_X_FORWARDED_FOR";
    /// Refuse joins of public channels (`config.private` false) with `PrivateOnly: This project only allows private channels`, as Supabase's "private channels only" setting does: every broadcast and presence channel is then authorized by your `realtime.messages` policies. `postgres_changes` needs a private channel too then (row scope still applies).
    private_only: bool = false, env "SWITCHBOARD_PRIVATE_ONLY";
    /// Seconds without any inbound frame before a socket is closed.
    idle_timeout_secs: u64 = 60, env "SWITCHBOARD_IDLE_TIMEOUT_SECS";
    /// Seconds a join with `config.broadcast.replication_ready` waits for the hub to be reading the change log (what carries database broadcasts) before the channel is shut with `Replication connection was not established in time`.
    replication_ready_timeout_secs: u64 = 60, env "SWITCHBOARD_REPLICATION_READY_TIMEOUT_SECS";
    /// Seconds a client has to send its HTTP request headers (the WebSocket upgrade included) before the connection is closed.
    http_header_timeout_secs: u64 = 10, env "SWITCHBOARD_HTTP_HEADER_TIMEOUT_SECS";
    /// Seconds to drain connections on SIGTERM/SIGINT.
    shutdown_deadline_secs: u64 = 10, env "SWITCHBOARD_SHUTDOWN_DEADLINE_SECS";
    /// Milliseconds between log polls when no wake-up arrives.
    capture_poll_ms: u64 = 1000, env "SWITCHBOARD_CAPTURE_POLL_MS";
    /// Rows per page when reading the change log.
    capture_batch_rows: usize = 1000, env "SWITCHBOARD_CAPTURE_BATCH_ROWS";
    /// Seconds change-log rows are kept before pruning (once every hub and durable reader has read them).
    retention_secs: u64 = 3600, env "SWITCHBOARD_RETENTION_SECS";
    /// Seconds after which rows are pruned even if a durable reader (parked subscription, webhook) has not read them; that reader is marked as having lost data.
    retention_max_secs: u64 = 24 * 3600, env "SWITCHBOARD_RETENTION_MAX_SECS";
    /// Seconds after a hub's last checkpoint before its unread rows stop holding the log back.
    node_expiry_secs: u64 = 300, env "SWITCHBOARD_NODE_EXPIRY_SECS";
    /// Seconds a parked resumable subscription waits for its client (capped at `retention_max_secs`).
    resume_grace_secs: u64 = 300, env "SWITCHBOARD_RESUME_GRACE_SECS";
    /// Most changes one resume replays; beyond it the client is told to refetch (`recovered: false`).
    resume_max_replay: usize = 10_000, env "SWITCHBOARD_RESUME_MAX_REPLAY";
    /// Seconds the batches this hub delivered are kept in memory, so that a channel resuming on this hub replays its gap without reading the log (0: always read the log).
    resume_memory_secs: u64 = 60, env "SWITCHBOARD_RESUME_MEMORY_SECS";
    /// Seconds `realtime.messages` rows (database broadcasts, Broadcast Replay's store) are kept.
    messages_retention_secs: u64 = 3 * 24 * 3600, env "SWITCHBOARD_MESSAGES_RETENTION_SECS";
    /// Postgres connections for catalog and row-scope checks.
    db_pool_size: usize = 8, env "SWITCHBOARD_DB_POOL_SIZE";
    /// Run pending migrations when `serve` starts.
    auto_migrate: bool = true, env "SWITCHBOARD_AUTO_MIGRATE";
    /// Return memory the allocator holds free (over 32 MiB, checked every 10 s) to the OS, so RSS comes back down after a flood (glibc only).
    memory_trim: bool = true, env "SWITCHBOARD_MEMORY_TRIM";
    /// Log format: `pretty` or `json`.
    log_format: String = "pretty".into(), env "SWITCHBOARD_LOG_FORMAT";
    /// Port of the local Postgres that `switchboard dev` runs.
    dev_pg_port: u16 = 54329, env "SWITCHBOARD_DEV_PG_PORT";
    /// Redis URL (`redis://[:password@]host:port[/db]`, or `redis+unix:///path?pass=…`); set, it turns cluster mode on.
    redis_url: String = String::new(), env "SWITCHBOARD_REDIS_URL";
    /// Nodes with the same Redis and cluster name form one cluster.
    cluster_name: String = "switchboard".into(), env "SWITCHBOARD_CLUSTER_NAME";
    /// Seconds a node may be silent before the others drop its members' presence.
    node_timeout_secs: u64 = 10, env "SWITCHBOARD_NODE_TIMEOUT_SECS";
    /// Secret that signs in to the inspector page (at least 16 characters, not three dot-separated parts, which would be read as a JWT); a service_role token works too.
    admin_secret: String = String::new(), env "SWITCHBOARD_ADMIN_SECRET";
    /// Serve the inspector page at `/inspector` (`false`: it answers 404).
    inspector: bool = true, env "SWITCHBOARD_INSPECTOR";
    /// Most events in one webhook request.
    webhook_batch_events: usize = 100, env "SWITCHBOARD_WEBHOOK_BATCH_EVENTS";
    /// Most bytes of one webhook request's body: a batch stops growing before it would pass this (a single change larger than this is sent alone).
    webhook_batch_bytes: usize = 4 << 20, env "SWITCHBOARD_WEBHOOK_BATCH_BYTES";
    /// Milliseconds a webhook batch may wait to fill up: at most this long after its oldest change was read or after the endpoint's last batch was sent, whichever is sooner (a change after a quiet spell goes at once).
    webhook_batch_ms: u64 = 1000, env "SWITCHBOARD_WEBHOOK_BATCH_MS";
    /// Milliseconds one webhook request may take before it counts as failed.
    webhook_timeout_ms: u64 = 10_000, env "SWITCHBOARD_WEBHOOK_TIMEOUT_MS";
    /// Milliseconds before the first retry of a failed webhook request; each further retry waits about twice as long (with jitter).
    webhook_retry_initial_ms: u64 = 1000, env "SWITCHBOARD_WEBHOOK_RETRY_INITIAL_MS";
    /// Longest wait between two webhook attempts, in seconds.
    webhook_retry_max_secs: u64 = 300, env "SWITCHBOARD_WEBHOOK_RETRY_MAX_SECS";
    /// Failed attempts in a row after which a webhook endpoint is paused (nothing is dropped: resume it and it goes on from its cursor).
    webhook_pause_after_failures: u32 = 50, env "SWITCHBOARD_WEBHOOK_PAUSE_AFTER_FAILURES";
    /// Seconds a hub's lease on a webhook endpoint lasts unrenewed; another hub takes the endpoint over after that. At least three times `webhook_timeout_ms`.
    webhook_lease_secs: u64 = 30, env "SWITCHBOARD_WEBHOOK_LEASE_SECS";
    /// Seconds a webhook endpoint's previous secret still signs (beside the new one, in `webhook-signature`) after `alter_webhook(secret => ...)` rotated it, so receivers can move to the new secret without failing a request. 0: the new secret alone at once.
    webhook_secret_overlap_secs: u64 = 24 * 3600, env "SWITCHBOARD_WEBHOOK_SECRET_OVERLAP_SECS";
    /// Longest long-poll (`wait`) of the change feed, in seconds.
    feed_max_wait_secs: u64 = 60, env "SWITCHBOARD_FEED_MAX_WAIT_SECS";
    /// Most changes one change-feed response may hold (`limit`).
    feed_max_limit: usize = 1000, env "SWITCHBOARD_FEED_MAX_LIMIT";
}

/// How webhooks are delivered and the change feed answers.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub batch_events: usize,
    /// Most bytes of one request's body (a single larger change goes alone).
    pub batch_bytes: usize,
    pub batch_wait: Duration,
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub pause_after_failures: u32,
    pub lease: Duration,
    /// How long a rotated-out secret still signs beside the new one.
    pub secret_overlap: Duration,
    pub feed_max_wait: Duration,
    pub feed_max_limit: usize,
}

/// A webhook endpoint declared in the config file (`[[webhooks]]`): upserted into
/// `realtime.webhook_endpoints` at every start, so for the fields it names the file wins
/// over changes made in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDecl {
    pub name: String,
    pub url: String,
    /// `schema.table` names.
    pub tables: Vec<String>,
    /// `INSERT`, `UPDATE`, `DELETE`; all three when left out.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub filter: Option<String>,
    /// `whsec_...`; generated once (and kept) when left out.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The parts of the config file that are not settings.
#[derive(Debug, Default, Deserialize)]
struct FileExtras {
    #[serde(default)]
    webhooks: Vec<WebhookDecl>,
}

/// Keys of the config file that hold declarations rather than settings.
const EXTRA_KEYS: &[&str] = &["webhooks"];

/// Shortest admin secret accepted: the inspector can mint tokens for any role.
pub const MIN_ADMIN_SECRET_LEN: usize = 16;

/// Connection-level limits, each answered with the reason text a client surfaces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub max_channels_per_connection: usize,
    pub max_changes_per_join: usize,
    pub max_changes_per_connection: usize,
    pub max_joins_per_second: u32,
    pub max_messages_per_second: u32,
    pub max_broadcast_bytes: usize,
    pub max_presence_bytes: usize,
    /// See `presence_calls_per_window` (0: no limit) and `presence_window_ms`.
    pub presence_calls_per_window: u32,
    pub presence_window: Duration,
    pub max_presences_per_topic: usize,
    /// At most `outbox_bytes`.
    pub max_presence_bytes_per_topic: usize,
    pub outbox_frames: usize,
    pub outbox_bytes: usize,
    /// See `outbox_grace_ms`.
    pub outbox_grace: Duration,
    pub idle_timeout: Duration,
    /// See `replication_ready_timeout_secs`.
    pub replication_ready_timeout: Duration,
    pub rest_broadcasts_per_token: u32,
    pub rest_broadcasts_per_address: u32,
    pub trust_x_forwarded_for: bool,
    /// See the `private_only` setting.
    pub private_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The validated configuration the hub runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None`: `/metrics` is served on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    /// Runs migrations and grants the hub's rights to `database_url`'s user.
    pub migrate_database_url: Option<String>,
    pub jwt_secret: Option<String>,
    /// Opaque API keys and the role each stands for (`api_keys`).
    pub api_keys: Vec<(String, String)>,
    /// Where the JWKS is read from (read when the hub starts).
    pub jwks: Option<crate::auth::JwksSource>,
    /// How often the JWKS is read again (`None`: only for unknown kids).
    pub jwks_refresh: Option<Duration>,
    /// Not a setting: least time between reads of the JWKS caused by unknown kids
    /// (`auth::KID_REFRESH_EVERY`; tests shorten it).
    pub jwks_kid_refresh_every: Duration,
    /// Roles tokens may name.
    pub allowed_roles: Vec<String>,
    pub jwt_nbf_leeway_secs: u64,
    /// See the `filter_inline_cost` setting.
    pub filter_inline_cost: u64,
    /// Test hook, not a setting: pauses the filter lane while held.
    pub filter_lane_hold: Option<crate::changes::LaneHold>,
    pub limits: Limits,
    pub shutdown_deadline: Duration,
    pub http_header_timeout: Duration,
    pub capture_poll: Duration,
    pub capture_batch_rows: usize,
    pub retention: Duration,
    pub retention_max: Duration,
    pub node_expiry: Duration,
    pub resume_grace: Duration,
    pub resume_max_replay: usize,
    /// How long delivered batches are kept for resumes on this hub (zero: not kept).
    pub resume_memory: Duration,
    /// How long `realtime.messages` rows are kept.
    pub messages_retention: Duration,
    pub db_pool_size: usize,
    pub auto_migrate: bool,
    /// Return freed memory to the OS (`memory::run_trimmer`).
    pub memory_trim: bool,
    pub log_format: LogFormat,
    pub dev_pg_port: u16,
    /// Cluster mode when set.
    pub redis_url: Option<String>,
    pub cluster_name: String,
    pub node_timeout: Duration,
    /// Signs in to the inspector; `None` leaves service_role tokens as the only way in.
    pub admin_secret: Option<String>,
    /// Serve `/inspector`.
    pub inspector: bool,
    pub consumers: ConsumerSettings,
    /// Webhook endpoints declared in the config file.
    pub webhooks: Vec<WebhookDecl>,
}

impl Settings {
    /// The effective settings as TOML, secrets redacted (`switchboard config`).
    pub fn effective_toml(&self) -> String {
        let mut s = self.clone().with_defaults();
        for secret in [&mut s.jwt_secret, &mut s.admin_secret, &mut s.api_keys] {
            if secret.as_deref().is_some_and(|v| !v.is_empty()) {
                *secret = Some("<redacted>".into());
            }
        }
        for url in [
            s.database_url.as_mut(),
            s.migrate_database_url.as_mut(),
            s.redis_url.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            *url = redact_url(url);
        }
        toml::to_string(&s).unwrap_or_default()
    }

    /// Reads a TOML settings file; unknown keys are errors that name the key.
    /// Declarations (`[[webhooks]]`) are read by `webhooks_from_file`.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let mut table = read_table(path)?;
        for key in EXTRA_KEYS {
            table.remove(*key);
        }
        toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                // serde's message names the type, not the key: find the key whose value
                // alone is refused.
                let culprit = table.iter().find(|(k, v)| {
                    let one = toml::Table::from_iter([((*k).clone(), (*v).clone())]);
                    toml::Value::Table(one).try_into::<Settings>().is_err()
                });
                match culprit {
                    Some((key, _)) => ConfigError::Parse {
                        path: path.to_owned(),
                        message: format!("invalid value for `{key}`: {}", e.message()),
                    },
                    None => parse_error(path, e),
                }
            })
    }
}

/// A password given as a parameter: `?password=…` / `&password=…` in a URL, or
/// `password=…` (quoted or not) in a `key=value` connection string; `sslpassword` too,
/// and `pass=…` (a Redis unix-socket URL's).
fn redact_password_params(conn: &str) -> String {
    static PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)((?:^|[?&\s])(?:(?:ssl)?password|pass)\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)",
        )
        .expect("a valid pattern")
    });
    PASSWORD.replace_all(conn, "${1}<redacted>").into_owned()
}

/// The webhook endpoints a TOML config file declares (`[[webhooks]]`).
pub fn webhooks_from_file(path: &Path) -> Result<Vec<WebhookDecl>, ConfigError> {
    let mut table = read_table(path)?;
    table.retain(|k, _| EXTRA_KEYS.contains(&k));
    let extras: FileExtras = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| parse_error(path, e))?;
    for (i, w) in extras.webhooks.iter().enumerate() {
        check_webhook(w)?;
        if extras.webhooks[..i].iter().any(|o| o.name == w.name) {
            return Err(ConfigError::Invalid {
                key: "webhooks",
                message: format!("{:?}: name is declared twice", w.name),
            });
        }
    }
    Ok(extras.webhooks)
}

/// `url` with its password redacted: in `user:password@`, and in `password=` parameters.
fn redact_url(url: &str) -> String {
    let mut url = url.to_owned();
    if let Some((creds, host)) = url.rsplit_once('@') {
        if let Some((user, _password)) = creds.rsplit_once(':').filter(|(u, _)| u.contains("//")) {
            url = format!("{user}:<redacted>@{host}");
        }
    }
    redact_password_params(&url)
}

/// Declared webhook endpoints as the file's `[[webhooks]]` tables, secrets redacted
/// (the end of `switchboard config`); empty when there are none.
pub fn webhooks_toml(decls: &[WebhookDecl]) -> String {
    #[derive(serde::Serialize)]
    struct Declared {
        webhooks: Vec<WebhookDecl>,
    }
    if decls.is_empty() {
        return String::new();
    }
    let webhooks = decls
        .iter()
        .map(|d| WebhookDecl {
            secret: d.secret.as_ref().map(|_| "<redacted>".into()),
            url: redact_url(&d.url),
            ..d.clone()
        })
        .collect();
    toml::to_string(&Declared { webhooks }).unwrap_or_default()
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| parse_error(path, e))
}

/// A file that is not TOML: the parser's whole report, with the line and column.
fn parse_error(path: &Path, e: toml::de::Error) -> ConfigError {
    ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    }
}

/// What can be checked of a declaration without a database.
fn check_webhook(w: &WebhookDecl) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "webhooks",
        message: format!("{:?}: {message}", w.name),
    };
    // The rules `realtime.check_webhook_fields` and `check_webhook_secret` (055, 030)
    // apply when the hub upserts the declaration: broken here, they would fail every
    // start's upsert, and with it the file's other endpoints.
    let name_ok = w.name.len() <= 63
        && w.name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && w.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(invalid(
            "name must be 1 to 63 letters, digits, \"_\", \".\" or \"-\", starting with a letter or digit"
                .into(),
        ));
    }
    let scheme = w.url.get(..8).unwrap_or(&w.url).to_ascii_lowercase();
    if !(scheme.starts_with("http://") || scheme.starts_with("https://"))
        || w.url.len() <= scheme.find("//").map_or(0, |i| i + 2)
        || w.url.chars().any(char::is_whitespace)
    {
        return Err(invalid(format!(
            "url {:?} must start with http:// or https:// and contain no spaces",
            w.url
        )));
    }
    if let Some(secret) = &w.secret {
        use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
        use base64::Engine as _;
        // As Postgres's `decode(…, 'base64')`: padded, stray low bits allowed.
        let engine = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let bytes = secret
            .strip_prefix("whsec_")
            .and_then(|b| engine.decode(b).ok());
        if bytes.is_none_or(|b| b.len() < 16) {
            return Err(invalid(
                "secret must be whsec_ followed by at least 16 bytes in base64 (leave it out and one is generated)"
                    .into(),
            ));
        }
    }
    if w.tables.is_empty() {
        return Err(invalid("tables must name at least one table".into()));
    }
    if w.events.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid(
            "events must name one or more of INSERT, UPDATE, DELETE (leave it out for all three)"
                .into(),
        ));
    }
    for e in w.events.iter().flatten() {
        if !["INSERT", "UPDATE", "DELETE"].contains(&e.to_ascii_uppercase().as_str()) {
            return Err(invalid(format!(
                "event {e:?} is not one of INSERT, UPDATE, DELETE"
            )));
        }
    }
    Ok(())
}

fn positive<T: PartialOrd + Default>(key: &'static str, v: T) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            key,
            message: "must be greater than 0".into(),
        })
    }
}

/// The `api_keys` setting: `<key>=<role>` pairs, comma-separated.
fn api_keys(value: &str, allowed_roles: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "api_keys",
        message,
    };
    let mut keys: Vec<(String, String)> = Vec::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, role)) = pair.split_once('=') else {
            return Err(invalid("each entry is `<key>=<role>`".into()));
        };
        let (key, role) = (key.trim(), role.trim());
        // The key itself is never echoed: it is a secret.
        let n = keys.len() + 1;
        if !key.starts_with("sb_") || key.len() < 16 {
            return Err(invalid(format!(
                "key {n} is not an opaque Supabase key (`sb_…`, at least 16 characters)"
            )));
        }
        if !allowed_roles.iter().any(|r| r == role) {
            return Err(invalid(format!(
                "key {n}: role {role:?} is not one of allowed_roles ({})",
                allowed_roles.join(", ")
            )));
        }
        if keys.iter().any(|(k, _)| k == key) {
            return Err(invalid(format!("key {n} is listed twice")));
        }
        keys.push((key.to_owned(), role.to_owned()));
    }
    Ok(keys)
}

/// The `jwks` setting: a URL, or a file that can be read now (a typo fails the load, not
/// the first token).
fn jwks_source(value: &str) -> Result<crate::auth::JwksSource, ConfigError> {
    use crate::auth::JwksSource;
    let invalid = |message: String| ConfigError::Invalid {
        key: "jwks",
        message,
    };
    let source = JwksSource::from_setting(value).map_err(invalid)?;
    if let JwksSource::File(path) = &source {
        std::fs::metadata(path)
            .and_then(|m| match m.is_file() {
                true => Ok(()),
                false => Err(std::io::Error::other("not a file")),
            })
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(source)
}

fn non_empty(s: String) -> Option<String> {
    (!s.trim().is_empty()).then_some(s)
}

fn consumer_settings(r: &Resolved) -> Result<ConsumerSettings, ConfigError> {
    let timeout = Duration::from_millis(positive("webhook_timeout_ms", r.webhook_timeout_ms)?);
    let lease = Duration::from_secs(positive("webhook_lease_secs", r.webhook_lease_secs)?);
    if lease < timeout * 3 {
        return Err(ConfigError::Invalid {
            key: "webhook_lease_secs",
            message: "must be at least three times webhook_timeout_ms".into(),
        });
    }
    Ok(ConsumerSettings {
        batch_events: positive("webhook_batch_events", r.webhook_batch_events)?,
        batch_bytes: positive("webhook_batch_bytes", r.webhook_batch_bytes)?,
        batch_wait: Duration::from_millis(r.webhook_batch_ms),
        timeout,
        retry_initial: Duration::from_millis(positive(
            "webhook_retry_initial_ms",
            r.webhook_retry_initial_ms,
        )?),
        retry_max: Duration::from_secs(positive(
            "webhook_retry_max_secs",
            r.webhook_retry_max_secs,
        )?),
        pause_after_failures: positive(
            "webhook_pause_after_failures",
            r.webhook_pause_after_failures,
        )?,
        lease,
        secret_overlap: Duration::from_secs(r.webhook_secret_overlap_secs),
        feed_max_wait: Duration::from_secs(r.feed_max_wait_secs),
        feed_max_limit: positive("feed_max_limit", r.feed_max_limit)?,
    })
}

/// The per-topic presence byte bound: at most `outbox_bytes`, so a joiner's
/// `presence_state` is never larger than the queue it goes into.
fn presence_bytes_per_topic(max_bytes: usize, outbox_bytes: usize) -> Result<usize, ConfigError> {
    let outbox_bytes = positive("outbox_bytes", outbox_bytes)?;
    let max_bytes = positive("max_presence_bytes_per_topic", max_bytes)?;
    if max_bytes > outbox_bytes {
        return Err(ConfigError::Invalid {
            key: "max_presence_bytes_per_topic",
            message: format!(
                "must be at most outbox_bytes ({outbox_bytes}), so a joiner's presence_state fits its queue"
            ),
        });
    }
    Ok(max_bytes)
}

impl Config {
    /// Applies defaults and validates; errors name the offending key.
    pub fn from_settings(settings: Settings) -> Result<Config, ConfigError> {
        let r = Resolved::from(settings);
        let consumers = consumer_settings(&r)?;
        let listen = r.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "listen",
            message: format!("{:?} is not a socket address like 0.0.0.0:4000", r.listen),
        })?;
        let jwks = match non_empty(r.jwks) {
            None => None,
            Some(value) => Some(jwks_source(&value)?),
        };
        let log_format = match r.log_format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid {
                    key: "log_format",
                    message: format!("{other:?} is not one of pretty, json"),
                })
            }
        };
        if !r.redis_url.is_empty() && r.redis_url.trim().is_empty() {
            // Cluster mode silently off on one node of several is a split deployment.
            return Err(ConfigError::Invalid {
                key: "redis_url",
                message: "is blank; leave it out (or empty) for a single node".into(),
            });
        }
        let redis_url = non_empty(r.redis_url);
        if let Some(url) = &redis_url {
            if !["redis://", "unix://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(ConfigError::Invalid {
                    key: "redis_url",
                    message: "must start with redis://, unix:// or redis+unix:// (TLS, rediss://, is not supported)".into(),
                });
            }
            // What `serve` would refuse at start, `switchboard config` refuses too.
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "redis_url",
                    message: format!("is not a valid Redis URL: {e}"),
                });
            }
        }
        if r.cluster_name.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "cluster_name",
                message: "must not be empty".into(),
            });
        }
        let limits = Limits {
            max_connections: positive("max_connections", r.max_connections)?,
            max_frame_bytes: positive("max_frame_bytes", r.max_frame_bytes)?,
            max_channels_per_connection: positive(
                "max_channels_per_connection",
                r.max_channels_per_connection,
            )?,
            max_changes_per_join: positive("max_changes_per_join", r.max_changes_per_join)?,
            max_changes_per_connection: positive(
                "max_changes_per_connection",
                r.max_changes_per_connection,
            )?,
            max_joins_per_second: positive("max_joins_per_second", r.max_joins_per_second)?,
            max_messages_per_second: positive(
                "max_messages_per_second",
                r.max_messages_per_second,
            )?,
            max_broadcast_bytes: positive("max_broadcast_bytes", r.max_broadcast_bytes)?,
            max_presence_bytes: positive("max_presence_bytes", r.max_presence_bytes)?,
            presence_calls_per_window: r.presence_calls_per_window,
            presence_window: Duration::from_millis(positive(
                "presence_window_ms",
                r.presence_window_ms,
            )?),
            max_presences_per_topic: positive(
                "max_presences_per_topic",
                r.max_presences_per_topic,
            )?,
            max_presence_bytes_per_topic: presence_bytes_per_topic(
                r.max_presence_bytes_per_topic,
                r.outbox_bytes,
            )?,
            outbox_frames: positive("outbox_frames", r.outbox_frames)?,
            outbox_bytes: positive("outbox_bytes", r.outbox_bytes)?,
            outbox_grace: Duration::from_millis(r.outbox_grace_ms),
            idle_timeout: Duration::from_secs(positive("idle_timeout_secs", r.idle_timeout_secs)?),
            replication_ready_timeout: Duration::from_secs(r.replication_ready_timeout_secs),
            rest_broadcasts_per_token: positive(
                "rest_broadcasts_per_second_per_token",
                r.rest_broadcasts_per_second_per_token,
            )?,
            rest_broadcasts_per_address: positive(
                "rest_broadcasts_per_second_per_address",
                r.rest_broadcasts_per_second_per_address,
            )?,
            trust_x_forwarded_for: r.trust_x_forwarded_for,
            private_only: r.private_only,
        };
        let admin_secret = non_empty(r.admin_secret);
        if admin_secret
            .as_ref()
            .is_some_and(|s| s.chars().count() < MIN_ADMIN_SECRET_LEN)
        {
            return Err(ConfigError::Invalid {
                key: "admin_secret",
                message: format!("must be at least {MIN_ADMIN_SECRET_LEN} characters"),
            });
        }
        // A credential shaped like a JWT is verified as one (bad tokens draw on no
        // failure budget), so such a secret could never sign in.
        if admin_secret
            .as_deref()
            .is_some_and(crate::auth::looks_like_jwt)
        {
            return Err(ConfigError::Invalid {
                key: "admin_secret",
                message: "must not look like a JWT (three non-empty parts separated by dots); \
                          remove a dot"
                    .into(),
            });
        }
        let allowed_roles: Vec<String> = r
            .allowed_roles
            .split(',')
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        if allowed_roles.is_empty() {
            return Err(ConfigError::Invalid {
                key: "allowed_roles",
                message: "name at least one role".into(),
            });
        }
        let api_keys = api_keys(&r.api_keys, &allowed_roles)?;
        let metrics_listen = match non_empty(r.metrics_listen) {
            None => None,
            Some(addr) => Some(addr.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics_listen",
                message: format!("{addr:?} is not a socket address like 127.0.0.1:9400"),
            })?),
        };
        Ok(Config {
            listen,
            metrics_listen,
            allowed_roles,
            jwt_nbf_leeway_secs: r.jwt_nbf_leeway_secs,
            filter_inline_cost: r.filter_inline_cost,
            filter_lane_hold: None,
            database_url: non_empty(r.database_url),
            migrate_database_url: non_empty(r.migrate_database_url),
            jwt_secret: non_empty(r.jwt_secret),
            api_keys,
            jwks,
            jwks_refresh: (r.jwks_refresh_secs > 0)
                .then(|| Duration::from_secs(r.jwks_refresh_secs)),
            jwks_kid_refresh_every: crate::auth::KID_REFRESH_EVERY,
            limits,
            shutdown_deadline: Duration::from_secs(r.shutdown_deadline_secs),
            http_header_timeout: Duration::from_secs(positive(
                "http_header_timeout_secs",
                r.http_header_timeout_secs,
            )?),
            capture_poll: Duration::from_millis(positive("capture_poll_ms", r.capture_poll_ms)?),
            capture_batch_rows: positive("capture_batch_rows", r.capture_batch_rows)?,
            retention: Duration::from_secs(positive("retention_secs", r.retention_secs)?),
            retention_max: Duration::from_secs(positive(
                "retention_max_secs",
                r.retention_max_secs,
            )?),
            node_expiry: Duration::from_secs(positive("node_expiry_secs", r.node_expiry_secs)?),
            resume_grace: Duration::from_secs(
                positive("resume_grace_secs", r.resume_grace_secs)?.min(r.retention_max_secs),
            ),
            resume_max_replay: positive("resume_max_replay", r.resume_max_replay)?,
            resume_memory: Duration::from_secs(r.resume_memory_secs),
            messages_retention: Duration::from_secs(positive(
                "messages_retention_secs",
                r.messages_retention_secs,
            )?),
            db_pool_size: positive("db_pool_size", r.db_pool_size)?,
            auto_migrate: r.auto_migrate,
            memory_trim: r.memory_trim,
            log_format,
            dev_pg_port: r.dev_pg_port,
            redis_url,
            cluster_name: r.cluster_name,
            node_timeout: Duration::from_secs(positive("node_timeout_secs", r.node_timeout_secs)?),
            admin_secret,
            inspector: r.inspector,
            consumers,
            webhooks: Vec::new(),
        })
    }

    /// A configuration for tests and embedding: defaults plus an HS256 secret.
    pub fn for_tests(jwt_secret: &str) -> Config {
        let settings = Settings {
            jwt_secret: Some(jwt_secret.to_owned()),
            listen: Some("127.0.0.1:0".into()),
            ..Settings::default()
        };
        Config::from_settings(settings).expect("default settings are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_toml_is_refused_with_its_line_and_column() {
        let e = "listen = \"x\"\nmax_broadcast_bytes = 256 * 1024\n"
            .parse::<toml::Table>()
            .unwrap_err();
        let message = parse_error(Path::new("hub.toml"), e).to_string();
        assert!(message.contains("hub.toml"), "{message}");
        assert!(message.contains("line 2, column 23"), "{message}");
        assert!(message.contains("256 * 1024"), "{message}");
    }

    /// `settings` are refused with an error that names `key`.
    fn refused_naming(settings: Settings, key: &str) {
        let err = Config::from_settings(settings).unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{err}");
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = Settings {
            max_channels_per_connection: Some(5),
            max_joins_per_second: Some(7),
            outbox_frames: Some(9),
            ..Settings::default()
        };
        let env_and_flags = Settings {
            max_channels_per_connection: Some(6),
            ..Settings::default()
        };
        let c = Config::from_settings(env_and_flags.merge(file)).unwrap();
        assert_eq!(c.limits.max_channels_per_connection, 6);
        assert_eq!(c.limits.max_joins_per_second, 7);
        assert_eq!(c.limits.outbox_frames, 9);
        assert_eq!(c.limits.max_broadcast_bytes, 256 * 1024);
    }

    #[test]
    fn invalid_value_names_the_key() {
        refused_naming(
            Settings {
                listen: Some("nonsense".into()),
                ..Settings::default()
            },
            "listen",
        );
        refused_naming(
            Settings {
                outbox_bytes: Some(0),
                ..Settings::default()
            },
            "outbox_bytes",
        );
    }

    #[test]
    fn the_jwks_is_a_url_or_a_file_that_exists_and_is_read_again_unless_told_not_to() {
        use crate::auth::JwksSource;
        let jwks = |value: &str, refresh: Option<u64>| {
            Config::from_settings(Settings {
                jwks: Some(value.into()),
                jwks_refresh_secs: refresh,
                ..Settings::default()
            })
        };
        let url = "https://abc.supabase.co/auth/v1/.well-known/jwks.json";
        let c = jwks(url, None).unwrap();
        assert_eq!(c.jwks, Some(JwksSource::Url(url.into())));
        assert_eq!(c.jwks_refresh, Some(Duration::from_secs(300)));
        assert_eq!(jwks(url, Some(0)).unwrap().jwks_refresh, None);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, "{}").unwrap();
        let c = jwks(file.to_str().unwrap(), None).unwrap();
        assert_eq!(c.jwks, Some(JwksSource::File(file.clone())));

        for missing in [dir.path().join("nope.json"), dir.path().to_path_buf()] {
            let err = jwks(missing.to_str().unwrap(), None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`jwks`") && err.contains("cannot read"),
                "{err}"
            );
        }
        refused_naming(
            Settings {
                jwks: Some("https://".into()),
                ..Settings::default()
            },
            "jwks",
        );
    }

    #[test]
    fn api_keys_are_key_role_pairs_of_opaque_keys_and_allowed_roles() {
        let keys = |value: &str| {
            Config::from_settings(Settings {
                api_keys: Some(value.into()),
                ..Settings::default()
            })
        };
        let c = keys(" sb_publishable_abcdef123456 = anon , sb_secret_abcdef1234567=service_role,")
            .unwrap();
        assert_eq!(
            c.api_keys,
            [
                ("sb_publishable_abcdef123456".into(), "anon".into()),
                ("sb_secret_abcdef1234567".into(), "service_role".into())
            ]
        );
        assert!(keys("").unwrap().api_keys.is_empty());
        let shown = Settings {
            api_keys: Some("sb_secret_abcdef1234567=service_role".into()),
            ..Settings::default()
        }
        .effective_toml();
        assert!(
            !shown.contains("abcdef") && shown.contains("api_keys = \"<redacted>\""),
            "{shown}"
        );
        for (bad, says) in [
            ("sb_publishable_abcdef123456", "`<key>=<role>`"),
            ("eyJhbGciOi.x.y=anon", "key 1 is not an opaque"),
            ("sb_short=anon", "key 1 is not an opaque"),
            (
                "sb_publishable_abcdef123456=postgres",
                "role \"postgres\" is not one of",
            ),
            (
                "sb_publishable_abcdef123456=anon,sb_publishable_abcdef123456=anon",
                "key 2 is listed twice",
            ),
        ] {
            let err = keys(bad).unwrap_err().to_string();
            assert!(
                err.contains("`api_keys`") && err.contains(says),
                "{bad}: {err}"
            );
            assert!(!err.contains("abcdef"), "the key is not echoed: {err}");
        }
    }

    #[test]
    fn redis_url_turns_cluster_mode_on_and_must_be_a_redis_url() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.redis_url, None);
        assert_eq!(c.node_timeout, Duration::from_secs(10));
        let s = Settings {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            node_timeout_secs: Some(3),
            ..Settings::default()
        };
        let c = Config::from_settings(s).unwrap();
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.node_timeout, Duration::from_secs(3));
        for bad in [
            "127.0.0.1:6379",
            " ",
            "redis://127.0.0.1:notaport",
            "redis://",
            "redis://127.0.0.1:6379/abc",
            "rediss://127.0.0.1:6379",
        ] {
            refused_naming(
                Settings {
                    redis_url: Some(bad.into()),
                    ..Settings::default()
                },
                "redis_url",
            );
        }
        let unix = Settings {
            redis_url: Some("redis+unix:///run/redis.sock?db=2&pass=s3cretpw".into()),
            ..Settings::default()
        };
        assert!(
            unix.effective_toml()
                .contains("redis_url = \"redis+unix:///run/redis.sock?db=2&pass=<redacted>\""),
            "{}",
            unix.effective_toml()
        );
        refused_naming(
            Settings {
                node_timeout_secs: Some(0),
                ..Settings::default()
            },
            "node_timeout_secs",
        );
    }

    #[test]
    fn a_database_password_is_redacted_in_every_form() {
        for (url, shown) in [
            ("postgres://u:s3cr3t@h/db", "postgres://u:<redacted>@h/db"),
            (
                "postgres://u@h/db?sslmode=require&password=s3cr3t",
                "postgres://u@h/db?sslmode=require&password=<redacted>",
            ),
            (
                "postgres://u@h/db?Password=s3cr3t&x=1",
                "postgres://u@h/db?Password=<redacted>&x=1",
            ),
            (
                "host=h user=u password=s3cr3t dbname=db",
                "host=h user=u password=<redacted> dbname=db",
            ),
            (
                "host=h password = 's3 cr\\'3t' dbname=db",
                "host=h password = <redacted> dbname=db",
            ),
            ("password=s3cr3t", "password=<redacted>"),
            (
                "postgres://u@h/db?sslpassword=s3cr3t",
                "postgres://u@h/db?sslpassword=<redacted>",
            ),
        ] {
            let s = Settings {
                database_url: Some(url.into()),
                migrate_database_url: Some(url.into()),
                ..Settings::default()
            };
            let text = s.effective_toml();
            assert!(!text.contains("s3"), "{url}: {text}");
            let shown = toml::Value::String(shown.into()).to_string();
            assert_eq!(text.matches(&shown).count(), 2, "{url}: {text}");
        }
    }

    #[test]
    fn the_redis_password_is_redacted() {
        let s = Settings {
            redis_url: Some("redis://:hunter2@redis:6379".into()),
            ..Settings::default()
        };
        let text = s.effective_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:<redacted>@redis:6379"), "{text}");
    }

    #[test]
    fn a_short_admin_secret_is_refused_and_redacted_when_printed() {
        refused_naming(
            Settings {
                admin_secret: Some("short".into()),
                ..Settings::default()
            },
            "admin_secret",
        );
        refused_naming(
            Settings {
                admin_secret: Some("my.admin.secret-0123456789".into()),
                ..Settings::default()
            },
            "admin_secret",
        );
        let s = Settings {
            admin_secret: Some("a-long-enough-admin-secret".into()),
            ..Settings::default()
        };
        assert!(!s.effective_toml().contains("a-long-enough"));
        let c = Config::from_settings(s).unwrap();
        assert_eq!(
            c.admin_secret.as_deref(),
            Some("a-long-enough-admin-secret")
        );
        assert!(c.inspector, "the inspector is on by default");
    }

    #[test]
    fn declared_webhooks_are_shown_with_their_secrets_redacted() {
        let decl = WebhookDecl {
            name: "crm".into(),
            url: "https://crm.example/hook".into(),
            tables: vec!["public.jobs".into()],
            events: Some(vec!["INSERT".into()]),
            filter: None,
            secret: Some("whsec_c2VjcmV0".into()),
        };
        let with_password = WebhookDecl {
            url: "https://ops:hunter2@crm.example/hook".into(),
            ..decl.clone()
        };
        let shown = webhooks_toml(&[with_password]);
        assert!(
            shown.contains("https://ops:<redacted>@crm.example/hook"),
            "{shown}"
        );
        let shown = webhooks_toml(std::slice::from_ref(&decl));
        assert!(shown.contains("[[webhooks]]"), "{shown}");
        assert!(!shown.contains("whsec_c2VjcmV0"), "{shown}");
        let back: FileExtras = toml::from_str(&shown).unwrap();
        let redacted = WebhookDecl {
            secret: Some("<redacted>".into()),
            ..decl
        };
        assert_eq!(back.webhooks, [redacted]);
        assert_eq!(webhooks_toml(&[]), "");
    }

    #[test]
    fn webhooks_are_declared_in_the_file_beside_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(
            &path,
            "webhook_batch_events = 10\n\
             [[webhooks]]\nname = \"crm\"\nurl = \"https://crm.example/hook\"\n\
             tables = [\"public.contacts\"]\nevents = [\"INSERT\"]\n",
        )
        .unwrap();
        let settings = Settings::from_file(&path).unwrap();
        assert_eq!(settings.webhook_batch_events, Some(10));
        let hooks = webhooks_from_file(&path).unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(
            hooks[0].events.as_deref(),
            Some(&["INSERT".to_string()][..])
        );
        std::fs::write(
            &path,
            "[[webhooks]]\nname = \"x\"\nurl = \"ftp://x\"\ntables = [\"t\"]\n",
        )
        .unwrap();
        let err = webhooks_from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("`webhooks`") && err.contains("ftp://x"),
            "{err}"
        );
    }

    #[test]
    fn a_webhook_the_database_would_refuse_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        let refused = |decl: &str, says: &str| {
            std::fs::write(&path, format!("[[webhooks]]\n{decl}\ntables = [\"t\"]\n")).unwrap();
            let err = webhooks_from_file(&path).unwrap_err().to_string();
            assert!(
                err.contains("`webhooks`") && err.contains(says),
                "{decl}: {err}"
            );
        };
        refused("name = \"bad name\"\nurl = \"http://x/y\"", "name must be");
        refused("name = \"-x\"\nurl = \"http://x/y\"", "name must be");
        refused("name = \"x\"\nurl = \"http://x/a b\"", "no spaces");
        refused("name = \"x\"\nurl = \"https://\"", "must start with");
        refused(
            "name = \"x\"\nurl = \"http://x/y\"\nevents = []",
            "events must",
        );
        for secret in ["nope", "whsec_", "whsec_c2hvcnQ=", "whsec_not base64!"] {
            refused(
                &format!("name = \"x\"\nurl = \"http://x/y\"\nsecret = \"{secret}\""),
                "secret must be whsec_",
            );
        }
        std::fs::write(
            &path,
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/y\"\ntables = [\"t\"]\n\
             secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\n\
             [[webhooks]]\nname = \"a\"\nurl = \"http://x/z\"\ntables = [\"t\"]\n",
        )
        .unwrap();
        let err = webhooks_from_file(&path).unwrap_err().to_string();
        assert!(err.contains("declared twice"), "{err}");
        std::fs::write(
            &path,
            "[[webhooks]]\nname = \"A-1.b_c\"\nurl = \"HTTPS://x/y\"\ntables = [\"t\"]\n\
             secret = \"whsec_AAAAAAAAAAAAAAAAAAAAAB==\"\n",
        )
        .unwrap();
        assert_eq!(
            webhooks_from_file(&path).unwrap().len(),
            1,
            "Postgres decodes it"
        );
    }

    #[test]
    fn a_webhook_lease_must_outlast_three_request_timeouts() {
        refused_naming(
            Settings {
                webhook_timeout_ms: Some(10_001),
                ..Settings::default()
            },
            "webhook_lease_secs",
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_in_the_file_is_refused_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        for (text, key) in [
            (
                "listen = \"127.0.0.1:1\"\nmax_connections = -1\n",
                "max_connections",
            ),
            ("listen = 5\n", "listen"),
            ("inspector = \"false\"\n", "inspector"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Settings::from_file(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_file_key_is_rejected_by_name() {
        let err = toml::from_str::<Settings>("max_chanels = 3").unwrap_err();
        assert!(err.message().contains("max_chanels"), "{}", err.message());
    }
}
