//! Switchboard: a realtime hub for Postgres-backed apps speaking the Supabase Realtime
//! protocol. This file lists the modules and wires them together; it holds no logic.

pub mod auth;
pub mod authz;
pub mod capture;
pub mod changes;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod consumers;
pub mod db;
pub mod localpg;
pub mod memory;
pub mod protocol;
pub mod resume;
pub mod router;
pub mod server;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;

/// Why the hub could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("auth: {0}")]
    Auth(#[from] auth::AuthError),
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
    #[error("database: {0}")]
    Db(#[from] db::DbError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the {0} task failed (see the panic above); the hub stopped")]
    TaskFailed(&'static str),
}

/// The first task the hub could not do without that failed, if any (see `critical`).
type Failed = Arc<std::sync::OnceLock<&'static str>>;

/// A task the hub cannot serve without (capture, dispatch). If it panics, the hub says so
/// and shuts down, and `run` returns `TaskFailed`, rather than keep serving sockets that
/// would never receive another change while `/ready` said all was well: a supervisor
/// restarts it, and clients that resume get what they missed.
async fn critical(
    name: &'static str,
    task: impl std::future::Future<Output = ()>,
    failed: Failed,
    shutdown: CancellationToken,
) {
    use futures_util::FutureExt;
    if std::panic::AssertUnwindSafe(task)
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(
            task = name,
            "a task the hub cannot serve without failed: shutting down"
        );
        let _ = failed.set(name);
        shutdown.cancel();
    }
}

/// Captured batches waiting for dispatch (the capture side waits when this is full).
const CAPTURE_QUEUE_BATCHES: usize = 16;

/// Refuses tokens naming an allowed role that the hub's database user may not act as
/// (Postgres would refuse it anyway; this says so at connect and join). Best effort: an
/// unreachable database leaves the list as configured.
async fn limit_roles(
    verifier: auth::Verifier,
    pool: &deadpool_postgres::Pool,
    allowed: &[String],
) -> auth::Verifier {
    let access = match pool.get().await {
        Ok(client) => db::hub_access(&client, allowed).await,
        Err(e) => Err(db::DbError::Pool(e.to_string())),
    };
    match access {
        Ok(access) => {
            if access.superuser {
                tracing::warn!(user = %access.user, "the hub's database user is a superuser: a token's role is the only limit (see README, \"Running as a non-superuser\")");
            } else {
                tracing::info!(user = %access.user, bypass_rls = access.bypass_rls, "the hub's database user is not a superuser");
            }
            if !access.unavailable.is_empty() {
                tracing::warn!(user = %access.user, roles = ?access.unavailable, "allowed roles the hub's database user is not a member of: tokens naming them are refused (grant them to it and restart the hub)");
            }
            verifier.unavailable_roles(&access.unavailable)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check which roles the hub's database user may act as");
            verifier
        }
    }
}

/// Longest wait between attempts to reach the database at start.
const MIGRATE_RETRY_MAX: Duration = Duration::from_secs(10);

/// Migrates (`auto_migrate`) once the database answers: a hub started while Postgres is
/// down or still starting waits and says so, rather than exiting (a hub that crashed
/// during an outage would otherwise stay down). Any other failure ends the start. False
/// when `shutdown` came first.
async fn migrate_when_reachable(
    admin: &str,
    url: &str,
    shutdown: &CancellationToken,
    unreachable_seen: &tokio::sync::Notify,
) -> Result<bool, RunError> {
    let transient = |e: &db::DbError| {
        let transient = matches!(e, db::DbError::Postgres(e) if unreachable(e));
        if transient {
            unreachable_seen.notify_one();
        }
        transient
    };
    let migrated = db::retry_while(
        "migrating (the database is unreachable)",
        MIGRATE_RETRY_MAX,
        shutdown,
        transient,
        || db::migrate_for_hub(admin, url),
    )
    .await?;
    Ok(migrated.is_some())
}

/// Whether `e` says the server could not be reached (the connection failed, or the
/// server answered that it is starting, shutting down or full), rather than refusing what
/// was asked (a password, a missing database, TLS the server or client will not do).
fn unreachable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    match e.code() {
        None => {
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                if s.is::<std::io::Error>() {
                    return true;
                }
                source = s.source();
            }
            false
        }
        Some(code) => [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code),
    }
}

/// Runs a hub on `listener` until `shutdown` is cancelled, then drains connections
/// within the configured deadline.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let jwks = match config.jwks.clone() {
        Some(source) => Some(Arc::new(
            auth::Jwks::load(source)
                .await?
                .kid_refresh_every(config.jwks_kid_refresh_every),
        )),
        None => None,
    };
    let mut verifier = auth::Verifier::with_jwks(config.jwt_secret.as_deref(), jwks)?
        .allow_roles(&config.allowed_roles)
        .api_keys(&config.api_keys)
        .nbf_leeway(config.jwt_nbf_leeway_secs as i64);
    let metrics = Arc::new(telemetry::Metrics::new());
    let failed = Failed::default();
    let cap = server::listen::connection_cap(config.limits.max_connections);
    if let (Some(url), true) = (&config.database_url, config.auto_migrate) {
        let admin = config.migrate_database_url.as_deref().unwrap_or(url);
        // Once the database turned out unreachable, `/health` answers while it is awaited
        // (a start that reaches it leaves its first clients queued until the hub serves).
        let (waited, unreachable_seen) = (shutdown.child_token(), tokio::sync::Notify::new());
        let starting = async {
            tokio::select! {
                _ = unreachable_seen.notified() => {}
                _ = waited.cancelled() => return Ok(()),
            }
            server::listen::serve(
                &listener,
                server::starting_routes(),
                cap,
                config.http_header_timeout,
                metrics.clone(),
                waited.clone(),
            )
            .await
        };
        let migrated = async {
            let migrated = migrate_when_reachable(admin, url, &shutdown, &unreachable_seen).await;
            waited.cancel();
            migrated
        };
        let (migrated, served) = tokio::join!(migrated, starting);
        served?;
        if !migrated? {
            return Ok(());
        }
    }
    let background = TaskTracker::new();
    let stop_background = CancellationToken::new();
    if let (Some(jwks), Some(every)) = (verifier.jwks(), config.jwks_refresh) {
        background.spawn(auth::refresh_every(
            jwks.clone(),
            every,
            stop_background.clone(),
        ));
    }
    let node = router::NodeId::random();
    let presence_limits = router::PresenceLimits {
        max_presences: config.limits.max_presences_per_topic,
        max_bytes: config.limits.max_presence_bytes_per_topic,
    };
    if config.memory_trim {
        background.spawn(memory::run_trimmer(stop_background.clone()));
    }

    let (router, cluster_status) = match &config.redis_url {
        None => {
            tracing::info!(%node, "node id (single node: no redis_url)");
            let status = Arc::new(cluster::ClusterStatus::single(node));
            let router = router::Router::new(metrics.clone()).with_presence_limits(presence_limits);
            (Arc::new(router), status)
        }
        Some(url) => {
            tracing::info!(%node, cluster = %config.cluster_name, "node id (cluster mode over Redis)");
            let cluster_config = cluster::ClusterConfig {
                redis_url: url.clone(),
                name: config.cluster_name.clone(),
                node_timeout: config.node_timeout,
            };
            let (handle, task) = cluster::start(cluster_config, node, metrics.clone())?;
            cluster::check_not_refused(&task, config.node_timeout / 2).await?;
            let router = Arc::new(
                router::Router::with_cluster(metrics.clone(), Arc::new(handle.clone()))
                    .with_presence_limits(presence_limits),
            );
            background.spawn(cluster::run_cluster(
                task,
                router.clone(),
                stop_background.clone(),
            ));
            (router, handle.status())
        }
    };

    // This hub's name in the log holds, resume state and webhook leases.
    let node_id = node.to_string();
    let (changes, authz, capture_status, resume, consumers) = match &config.database_url {
        None => (
            changes::Changes::new(None),
            authz::Authz::new(None),
            None,
            None,
            None,
        ),
        Some(url) => {
            let pool = db::pool(url, config.db_pool_size)?;
            verifier = limit_roles(verifier, &pool, &config.allowed_roles).await;
            let changes = changes::Changes::new(Some(changes::Catalog::new(pool.clone())));
            let status = Arc::new(capture::CaptureStatus::new());
            let (tx, rx) = mpsc::channel(CAPTURE_QUEUE_BATCHES);
            let capture_config = capture::CaptureConfig {
                poll_interval: config.capture_poll,
                batch_limit: config.capture_batch_rows,
                retention: capture::Retention {
                    keep: config.retention,
                    cap: config.retention_max.max(config.retention),
                    node_expiry: config.node_expiry,
                },
                node_id: node_id.clone(),
                ..capture::CaptureConfig::new(url.clone())
            };
            background.spawn(critical(
                "capture",
                capture::run_capture(capture_config, tx, status.clone(), stop_background.clone()),
                failed.clone(),
                shutdown.clone(),
            ));
            background.spawn(capture::run_maintenance(
                pool.clone(),
                capture::Maintenance {
                    messages_retention: config.messages_retention,
                },
                stop_background.clone(),
            ));
            let consumers = consumers::ConsumersHandle::new(consumers::ConsumersParts {
                pool: pool.clone(),
                changes: changes.clone(),
                rls: changes::RlsChecker::new(pool.clone()),
                progress: status.progress(),
                ticks: status.table_ticks(),
                settings: config.consumers.clone(),
                poll: config.capture_poll,
                node_id: node_id.clone(),
                declared: config.webhooks.clone(),
            });
            let webhooks = consumers.clone();
            let stop = stop_background.clone();
            background.spawn(async move { webhooks.run_webhooks(stop).await });
            let dispatch = changes.clone();
            let (router, stop) = (router.clone(), stop_background.clone());
            let lane = changes::LaneSettings {
                inline_cost: config.filter_inline_cost,
                hold: config.filter_lane_hold.clone(),
            };
            background.spawn(critical(
                "dispatch",
                async move { dispatch.run_dispatch(router, rx, lane, stop).await },
                failed.clone(),
                shutdown.clone(),
            ));
            let resume = resume::ResumeHandle::new(
                pool.clone(),
                changes.clone(),
                node_id.clone(),
                resume::ResumeConfig {
                    grace: config.resume_grace,
                    max_replay: config.resume_max_replay,
                    memory: config.resume_memory,
                },
                metrics.clone(),
            );
            background.spawn(resume.clone().run_writer(stop_background.clone()));
            (
                changes,
                authz::Authz::new(Some(pool)),
                Some(status),
                Some(resume),
                Some(consumers),
            )
        }
    };

    let services = Arc::new(channel::Services {
        router,
        changes,
        authz,
        capture: capture_status.clone(),
        verifier,
        limits: config.limits.clone(),
        metrics,
        resume,
    });
    let inspector = config.inspector.then(|| {
        let inspector = server::inspector::Inspector::new(&config);
        background.spawn(inspector.history().run_sampler(
            capture_status.clone(),
            services.changes.clone(),
            stop_background.clone(),
        ));
        inspector
    });
    let hub = Arc::new(server::Hub {
        services,
        shutdown: shutdown.clone(),
        connections: TaskTracker::new(),
        writers: crate::server::writer::Writers::per_core(),
        connection_permits: Arc::new(Semaphore::new(config.limits.max_connections)),
        capture: capture_status,
        cluster: cluster_status,
        consumers,
        inspector,
        admin: server::admin::Gate::new(config.admin_secret.clone()),
        rest_limits: server::rest::RestLimits::new(
            config.limits.rest_broadcasts_per_token,
            config.limits.rest_broadcasts_per_address,
            config.limits.trust_x_forwarded_for,
        ),
    });
    if let Some(addr) = config.metrics_listen {
        let metrics_listener = TcpListener::bind(addr).await?;
        tracing::info!(%addr, "metrics listening");
        let (app, stop) = (server::metrics_routes(hub.clone()), shutdown.clone());
        background.spawn(async move {
            let served = axum::serve(metrics_listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "metrics listener failed");
            }
        });
    }
    tracing::info!(addr = %listener.local_addr()?, connection_cap = cap, "switchboard listening");
    server::listen::serve(
        &listener,
        server::routes(hub.clone(), config.metrics_listen.is_none()),
        cap,
        config.http_header_timeout,
        hub.services.metrics.clone(),
        shutdown.clone(),
    )
    .await?;

    // Upgraded sockets are not awaited by axum: the hub tracks and drains its own.
    hub.connections.close();
    if tokio::time::timeout(config.shutdown_deadline, hub.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed with connections still open");
    }
    stop_background.cancel();
    background.close();
    background.wait().await;
    tracing::info!("switchboard stopped");
    match failed.get() {
        Some(name) => Err(RunError::TaskFailed(name)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_critical_task_that_panics_shuts_the_hub_down_and_names_itself() {
        let (failed, shutdown) = (Failed::default(), CancellationToken::new());
        critical("ends", async {}, failed.clone(), shutdown.clone()).await;
        assert!(failed.get().is_none() && !shutdown.is_cancelled());
        let panics = async { panic!("a row it could not read") };
        critical("capture", panics, failed.clone(), shutdown.clone()).await;
        assert_eq!(failed.get(), Some(&"capture"));
        assert!(shutdown.is_cancelled());
    }
}
