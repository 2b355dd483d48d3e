//! Logging setup, the hub's metrics registry (one per hub, no globals, so several hubs can
//! run in one test process), and one named function per notable event that writes the
//! log line and bumps the metric together.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::LogFormat;

/// Label set with a single `kind` (or `reason`) label.
pub type KindLabel = [(&'static str, &'static str); 1];

/// Every metric the hub exports.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub channels: Gauge,
    pub joins: Counter,
    pub messages_in: Family<KindLabel, Counter>,
    pub messages_out: Family<KindLabel, Counter>,
    pub drops: Family<KindLabel, Counter>,
    /// Seconds from a change's commit (or a broadcast's arrival) to queueing for clients.
    pub fanout_latency: Histogram,
    pub capture_lag_ms: Gauge<i64, AtomicI64Wrap>,
    pub capture_rows: Counter,
    pub capture_rows_ahead: Counter,
    pub capture_reconnects: Gauge,
    pub capture_connected: Gauge,
    /// 1 while cluster mode is on and Redis is unreachable (traffic is node-local).
    pub cluster_degraded: Gauge,
    pub cluster_peers: Gauge,
    pub cluster_reconnects: Counter,
    pub cluster_published: Family<KindLabel, Counter>,
    pub cluster_received: Family<KindLabel, Counter>,
    /// Resumable subscriptions parked in Postgres (all hubs), refreshed every few seconds.
    pub resume_parked: Gauge,
    /// Parks, first positions and releases whose write failed (the database was out),
    /// waiting for the next write.
    pub resume_unwritten: Gauge,
    /// Frames waiting for the filter lane to judge their costly filters (`changes::lane`).
    pub filter_lane_waiting: Gauge,
    /// Change feed requests waiting (long-polling) for changes, set on scrape.
    pub feed_waiting: Gauge,
    /// Resuming joins by outcome (`recovered` = "true" or the reason it was not).
    pub resumes: Family<[(&'static str, &'static str); 1], Counter>,
    /// Changes and database broadcasts replayed to resumed subscriptions.
    pub resume_replayed: Counter,
    /// Resumed gaps replayed from the batches this hub kept (`changes::Recent`), the log
    /// not read.
    pub resume_from_memory: Counter,
    /// Resumed gaps replayed from the one log read of a restart storm (`resume::restart`).
    pub resume_from_restart_read: Counter,
    /// Per webhook endpoint, refreshed from `consumers` on each scrape.
    pub webhooks: WebhookMetrics,
}

/// Label set naming one webhook endpoint.
pub type EndpointLabel = [(&'static str, String); 1];

/// Per-endpoint webhook gauges (`switchboard_webhook_*{endpoint="..."}`). Values come
/// from the database, so every hub reports every endpoint the same way.
#[derive(Default)]
pub struct WebhookMetrics {
    pub lag_events: Family<EndpointLabel, Gauge>,
    pub lag_seconds: Family<EndpointLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub pending_events: Family<EndpointLabel, Gauge>,
    pub failures: Family<EndpointLabel, Gauge>,
    pub attempts: Family<EndpointLabel, Gauge>,
    pub delivered_events: Family<EndpointLabel, Gauge>,
    pub last_success: Family<EndpointLabel, Gauge>,
    pub last_status: Family<EndpointLabel, Gauge>,
    pub paused: Family<EndpointLabel, Gauge>,
    pub lost_data: Family<EndpointLabel, Gauge>,
}

impl WebhookMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "webhook_lag_events",
            "Events of the endpoint's tables after its cursor (counting at most 100,000 log rows)",
            self.lag_events.clone(),
        );
        r.register(
            "webhook_lag_seconds",
            "Seconds since the oldest change the endpoint has not acknowledged committed",
            self.lag_seconds.clone(),
        );
        r.register(
            "webhook_pending_events",
            "Events read and waiting for a 2xx on the hub delivering the endpoint",
            self.pending_events.clone(),
        );
        r.register(
            "webhook_failures",
            "Failed attempts in a row (0 after a success)",
            self.failures.clone(),
        );
        r.register(
            "webhook_attempts",
            "Delivery attempts since the endpoint was created",
            self.attempts.clone(),
        );
        r.register(
            "webhook_delivered_events",
            "Events acknowledged with a 2xx since the endpoint was created",
            self.delivered_events.clone(),
        );
        r.register(
            "webhook_last_success_timestamp_seconds",
            "Unix time of the last 2xx (0: none yet)",
            self.last_success.clone(),
        );
        r.register(
            "webhook_last_error_status",
            "HTTP status of the last failed attempt (0: none, or no answer)",
            self.last_status.clone(),
        );
        r.register(
            "webhook_paused",
            "1 while the endpoint is paused",
            self.paused.clone(),
        );
        r.register(
            "webhook_lost_data",
            "1 once the log was pruned past the endpoint's cursor (changes lost; replay clears it)",
            self.lost_data.clone(),
        );
    }

    /// Forgets every endpoint (before the current ones are set again).
    pub fn clear(&self) {
        for family in [
            &self.lag_events,
            &self.pending_events,
            &self.failures,
            &self.attempts,
            &self.delivered_events,
            &self.last_success,
            &self.last_status,
            &self.paused,
            &self.lost_data,
        ] {
            family.clear();
        }
        self.lag_seconds.clear();
    }
}

/// prometheus-client wants an atomic type for gauges; plain i64 on AtomicI64.
pub type AtomicI64Wrap = std::sync::atomic::AtomicI64;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchboard");
        let connections = Gauge::default();
        let channels = Gauge::default();
        let joins = Counter::default();
        let messages_in = Family::<KindLabel, Counter>::default();
        let messages_out = Family::<KindLabel, Counter>::default();
        let drops = Family::<KindLabel, Counter>::default();
        let fanout_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let capture_lag_ms = Gauge::<i64, AtomicI64Wrap>::default();
        let capture_rows = Counter::default();
        let capture_rows_ahead = Counter::default();
        let capture_reconnects = Gauge::default();
        let capture_connected = Gauge::default();
        let cluster_degraded = Gauge::default();
        let cluster_peers = Gauge::default();
        let cluster_reconnects = Counter::default();
        let cluster_published = Family::<KindLabel, Counter>::default();
        let cluster_received = Family::<KindLabel, Counter>::default();
        let resume_parked = Gauge::default();
        let resume_unwritten = Gauge::default();
        let filter_lane_waiting = Gauge::default();
        let feed_waiting = Gauge::default();
        let resumes = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let resume_replayed = Counter::default();
        let resume_from_memory = Counter::default();
        let resume_from_restart_read = Counter::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register("channels", "Joined channels", channels.clone());
        registry.register("joins", "Channel joins accepted", joins.clone());
        registry.register(
            "messages_in",
            "Client messages by kind",
            messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Frames queued to clients by kind",
            messages_out.clone(),
        );
        registry.register(
            "drops",
            "Messages dropped or clients cut off, by reason",
            drops.clone(),
        );
        registry.register(
            "fanout_latency_seconds",
            "Commit (or arrival) to queued-for-client latency",
            fanout_latency.clone(),
        );
        registry.register(
            "capture_lag_ms",
            "Age of the newest change at the last read of the change log, or how long the read under way has taken when longer (a stalled read shows here)",
            capture_lag_ms.clone(),
        );
        registry.register(
            "capture_rows",
            "Changes and database broadcasts read from the change log",
            capture_rows.clone(),
        );
        registry.register(
            "capture_rows_ahead",
            "Changes delivered from a wake-up's payload before the log read that confirms them",
            capture_rows_ahead.clone(),
        );
        registry.register(
            "capture_reconnects",
            "Listener reconnects since start",
            capture_reconnects.clone(),
        );
        registry.register(
            "capture_connected",
            "1 while the change listener is connected",
            capture_connected.clone(),
        );
        registry.register(
            "cluster_degraded",
            "1 while Redis is unreachable and broadcast/presence are node-local",
            cluster_degraded.clone(),
        );
        registry.register(
            "cluster_peers",
            "Other hub nodes heard from within node_timeout_secs",
            cluster_peers.clone(),
        );
        registry.register(
            "cluster_reconnects",
            "Redis sessions started after the first",
            cluster_reconnects.clone(),
        );
        registry.register(
            "cluster_published",
            "Messages published to other nodes, by kind",
            cluster_published.clone(),
        );
        registry.register(
            "cluster_received",
            "Messages received from other nodes, by kind",
            cluster_received.clone(),
        );
        registry.register(
            "resume_parked",
            "Resumable subscriptions parked in Postgres",
            resume_parked.clone(),
        );
        registry.register(
            "resume_unwritten",
            "Resumable subscription parks and releases waiting for the database",
            resume_unwritten.clone(),
        );
        registry.register(
            "filter_lane_waiting",
            "Frames waiting for the filter lane to judge their costly filters",
            filter_lane_waiting.clone(),
        );
        registry.register(
            "feed_waiting",
            "Change feed requests waiting for changes",
            feed_waiting.clone(),
        );
        registry.register("resumes", "Resuming joins by outcome", resumes.clone());
        registry.register(
            "resume_replayed",
            "Changes and database broadcasts replayed to resumed subscriptions",
            resume_replayed.clone(),
        );
        registry.register(
            "resume_from_memory",
            "Resumed gaps replayed from the batches this hub kept in memory, without reading the log",
            resume_from_memory.clone(),
        );
        registry.register(
            "resume_from_restart_read",
            "Resumed gaps from before this hub started, replayed from one log read shared by the resumes of the storm",
            resume_from_restart_read.clone(),
        );
        let webhooks = WebhookMetrics::default();
        webhooks.register(&mut registry);
        Metrics {
            registry,
            connections,
            channels,
            joins,
            messages_in,
            messages_out,
            drops,
            fanout_latency,
            capture_lag_ms,
            capture_rows,
            capture_rows_ahead,
            capture_reconnects,
            capture_connected,
            cluster_degraded,
            cluster_peers,
            cluster_reconnects,
            cluster_published,
            cluster_received,
            resume_parked,
            resume_unwritten,
            filter_lane_waiting,
            feed_waiting,
            resumes,
            resume_replayed,
            resume_from_memory,
            resume_from_restart_read,
            webhooks,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn message_in(&self, kind: &'static str) {
        self.messages_in.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn message_out(&self, kind: &'static str, n: u64) {
        if n > 0 {
            self.messages_out.get_or_create(&[("kind", kind)]).inc_by(n);
        }
    }

    pub fn dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.drops.get_or_create(&[("reason", reason)]).inc_by(n);
        }
    }

    /// A client's outbound queue overflowed; it is being disconnected.
    pub fn slow_consumer(&self, conn_id: u64) {
        tracing::warn!(conn_id, "slow consumer: outbound queue full, disconnecting");
        self.dropped("slow_consumer", 1);
    }

    /// A client hit a configured limit.
    pub fn limit_hit(&self, conn_id: u64, reason: &'static str) {
        tracing::info!(conn_id, reason, "client limit reached");
        self.dropped(reason, 1);
    }
}

/// A process-wide unique id (connections, joins).
pub fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Installs the global tracing subscriber (binary only; tests keep the default).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    use std::io::IsTerminal as _;
    // Colour only for a terminal: a log file or pipe gets plain text.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(
        std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    );
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
