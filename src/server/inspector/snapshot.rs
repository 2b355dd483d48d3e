//! What the page shows, as one JSON document: the hub, capture with its recent samples,
//! enabled tables with their change rates, tables joins asked for that are not enabled
//! (with the SQL that enables them), connections, topics with channels and presence, and
//! webhook endpoints. Built from the hub's handles (`CaptureStatus`, `Changes`, `Router`,
//! `ConsumersHandle`, metrics); reads only: at most one cached catalog query and one
//! cached webhook status query.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::history::Sample;
use crate::capture::CaptureStatusSnapshot;
use crate::changes::{quote_ident, TableName};
use crate::consumers::EndpointStatus;
use crate::protocol::enable_statement;
use crate::router::TopicSummary;
use crate::server::Hub;

/// Most topics listed (the busiest first).
const MAX_TOPICS: usize = 200;

#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Milliseconds since the epoch.
    pub at: i64,
    pub hub: HubInfo,
    /// `None` when the hub runs without a database.
    pub capture: Option<Capture>,
    /// Capture samples, one a second, oldest first (only new ones on a stream).
    pub samples: Vec<Sample>,
    pub tables: Tables,
    pub connections: Connections,
    pub topics: Vec<TopicSummary>,
    /// `None` when the hub runs without a database.
    pub webhooks: Option<Webhooks>,
}

#[derive(Debug, Default, Serialize)]
pub struct Webhooks {
    pub endpoints: Vec<EndpointStatus>,
    /// Why the endpoints could not be read, if they could not.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HubInfo {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub database: bool,
    /// The hub has an HS secret, so the "try it" panel can mint tokens.
    pub can_mint: bool,
}

#[derive(Debug, Serialize)]
pub struct Capture {
    #[serde(flatten)]
    pub status: CaptureStatusSnapshot,
    pub ready: bool,
    pub rows_per_sec: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Tables {
    pub enabled: Vec<EnabledRow>,
    /// Why the enabled list could not be read, if it could not.
    pub error: Option<String>,
    /// Tables joins asked for that are not enabled, most recent first.
    pub not_enabled: Vec<NotEnabledRow>,
}

#[derive(Debug, Serialize)]
pub struct EnabledRow {
    pub schema: String,
    pub table: String,
    /// `publication` or `realtime.enable`, once `realtime.enabled_tables` says.
    pub via: Option<String>,
    /// The events its subscribers receive, when the publication publishes fewer than all.
    pub events: Option<Vec<String>>,
    pub changes_total: u64,
    pub changes_per_sec: f64,
    /// Live postgres_changes subscriptions receiving this table's changes (naming it,
    /// its schema, or every table).
    pub subscriptions: usize,
}

#[derive(Debug, Serialize)]
pub struct NotEnabledRow {
    pub schema: String,
    pub table: String,
    pub refused_joins: u64,
    pub last_seen: DateTime<Utc>,
    /// Paste into psql to enable it.
    pub enable_sql: String,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    pub open: i64,
    pub max: usize,
    pub channels: i64,
    pub topics: usize,
}

/// Builds the document; `after_seq` leaves out samples the caller already has.
pub async fn build(hub: &Hub, after_seq: u64) -> Snapshot {
    let inspector = hub
        .inspector
        .as_ref()
        .expect("inspector routes exist only with an inspector");
    let svc = &hub.services;
    let (samples, rows_per_sec) = inspector
        .history
        .read(|h| (h.samples_after(after_seq), h.rows_per_sec()));
    let capture = hub.capture.as_ref().map(|c| Capture {
        status: c.snapshot(),
        ready: c.is_ready(),
        rows_per_sec,
    });
    let m = &svc.metrics;
    Snapshot {
        at: Utc::now().timestamp_millis(),
        hub: HubInfo {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: inspector.started.elapsed().as_secs(),
            database: hub.capture.is_some(),
            can_mint: inspector.mint_secret.is_some(),
        },
        capture,
        samples,
        tables: tables(hub).await,
        connections: Connections {
            open: m.connections.get(),
            max: svc.limits.max_connections,
            channels: m.channels.get(),
            topics: svc.router.topic_count(),
        },
        topics: svc.router.summary(MAX_TOPICS),
        webhooks: webhooks(hub).await,
    }
}

async fn webhooks(hub: &Hub) -> Option<Webhooks> {
    let consumers = hub.consumers.as_ref()?;
    Some(match consumers.status().await {
        Ok(list) => Webhooks {
            endpoints: list.to_vec(),
            error: None,
        },
        Err(e) => Webhooks {
            endpoints: Vec::new(),
            error: Some(e.to_string()),
        },
    })
}

async fn tables(hub: &Hub) -> Tables {
    let changes = &hub.services.changes;
    let Some(listed) = changes.enabled_tables().await else {
        return Tables::default();
    };
    let (list, error) = match listed {
        Ok(list) => (list, None),
        Err(e) => (Default::default(), Some(e.to_string())),
    };
    let totals = changes.stats().change_totals();
    let subscriptions = changes.subscription_counts();
    let history = &hub.inspector.as_ref().expect("inspector").history;
    let enabled: Vec<EnabledRow> = history.read(|h| {
        list.iter()
            .map(|t| {
                let name: TableName = (t.schema.as_str().into(), t.table.as_str().into());
                EnabledRow {
                    schema: t.schema.clone(),
                    table: t.table.clone(),
                    via: t.via.clone(),
                    events: t.events.clone().filter(|e| e.len() < 3),
                    changes_total: totals.get(&name).copied().unwrap_or(0),
                    changes_per_sec: h.table_rate(&name),
                    subscriptions: subscriptions.covering(&name),
                }
            })
            .collect()
    });
    let is_enabled: HashSet<(&str, &str)> = enabled
        .iter()
        .map(|t| (t.schema.as_str(), t.table.as_str()))
        .collect();
    let not_enabled = changes
        .stats()
        .refused_tables()
        .into_iter()
        .filter(|((s, t), _)| error.is_some() || !is_enabled.contains(&(&**s, &**t)))
        .map(|((schema, table), r)| NotEnabledRow {
            enable_sql: enable_statement(&format!(
                "{}.{}",
                quote_ident(&schema),
                quote_ident(&table)
            )),
            schema: schema.to_string(),
            table: table.to_string(),
            refused_joins: r.count,
            last_seen: r.last_seen,
        })
        .collect();
    Tables {
        enabled,
        error,
        not_enabled,
    }
}
