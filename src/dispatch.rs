//! From captured log rows to client frames: match each change against the subscription
//! index in-process, check row scope for the matched subscribers only (one round trip per
//! batch), then encode once per visibility shape and queue for each member.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, TableInfo};
use crate::protocol::{self, Broadcast, BroadcastPayload, Vsn, WireFrame};
use crate::rls::{RlsChecker, Viewer, Visibility};
use crate::router::change::{Change, DbBroadcast, DbEvent, Op};
use crate::router::postgres::{Matched, ViewerClaims};
use crate::router::{Router, TopicKey};

/// Records larger than this are cut down (PROTOCOL.md §4, "Error 413").
const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Under the 413 rule, fields whose JSON is longer than this are dropped.
const MAX_FIELD_BYTES_WHEN_TOO_LARGE: usize = 64;
const PAYLOAD_TOO_LARGE: &str = "Error 413: Payload Too Large";
const NO_PRIMARY_KEY: &str = "Error 400: Bad Request, no primary key";

/// One change with its matched members and their distinct viewers.
struct Planned {
    change: Change,
    table: Arc<TableInfo>,
    matched: Vec<Matched>,
    /// Index into `viewers` for each matched member.
    viewer_of: Vec<usize>,
    viewers: Vec<Viewer>,
}

enum Step {
    Broadcast(DbBroadcast),
    Change(Planned),
}

pub struct Dispatcher {
    pub router: Arc<Router>,
    pub catalog: Catalog,
    pub rls: RlsChecker,
}

/// Batches whose row-scope checks may be in flight at once (over the pool); delivery
/// still happens strictly in capture order.
const PIPELINE_DEPTH: usize = 4;

/// Consumes captured batches until the capture side hangs up or the hub shuts down.
pub async fn run_dispatch(
    d: Dispatcher,
    rx: mpsc::Receiver<Vec<DbEvent>>,
    shutdown: CancellationToken,
) {
    use futures_util::StreamExt;
    let d = Arc::new(d);
    let batches =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let checked = batches
        .map(|batch| {
            let (d, shutdown) = (d.clone(), shutdown.clone());
            async move {
                let steps = d.plan(batch).await;
                let visibility = d.check(&steps, &shutdown).await;
                (steps, visibility)
            }
        })
        .buffered(PIPELINE_DEPTH);
    let mut checked = std::pin::pin!(checked);
    loop {
        let (steps, visibility) = tokio::select! {
            next = checked.next() => match next { Some(n) => n, None => return },
            _ = shutdown.cancelled() => return,
        };
        let mut vis = visibility.into_iter();
        for step in steps {
            match step {
                Step::Broadcast(b) => d.deliver_broadcast(b),
                Step::Change(p) => {
                    let v = vis.next().unwrap_or_default();
                    d.deliver_change(&p, &v);
                }
            }
        }
    }
}

impl Dispatcher {
    async fn plan(&self, batch: Vec<DbEvent>) -> Vec<Step> {
        let mut steps = Vec::with_capacity(batch.len());
        for event in batch {
            let change = match event {
                DbEvent::Broadcast(b) => {
                    steps.push(Step::Broadcast(b));
                    continue;
                }
                DbEvent::Change(c) => c,
            };
            let matched = self.router.postgres.matching(&change);
            if matched.is_empty() {
                continue;
            }
            let table = match self.catalog.table(&change.schema, &change.table).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, table = %change.table, "catalog lookup failed; change not delivered");
                    continue;
                }
            };
            let mut distinct: HashMap<ViewerClaims, usize> = HashMap::new();
            let mut viewers = Vec::new();
            let viewer_of = matched
                .iter()
                .map(|m| {
                    let v = m.member.viewer();
                    *distinct.entry(v.clone()).or_insert_with(|| {
                        viewers.push(v.clone());
                        viewers.len() - 1
                    })
                })
                .collect();
            steps.push(Step::Change(Planned {
                change,
                table,
                matched,
                viewer_of,
                viewers,
            }));
        }
        steps
    }

    /// Row-scope checks for every planned change in one round trip; retried while the
    /// database is unreachable (the capture side waits meanwhile, nothing is lost).
    async fn check(&self, steps: &[Step], shutdown: &CancellationToken) -> Vec<Vec<Visibility>> {
        let items: Vec<(&Change, &TableInfo, &[Viewer])> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Change(p) => Some((&p.change, p.table.as_ref(), p.viewers.as_slice())),
                Step::Broadcast(_) => None,
            })
            .collect();
        if items.is_empty() {
            return Vec::new();
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.rls.check(&items).await {
                Ok(v) => return v,
                Err(e) => {
                    tracing::warn!(error = %e, "row-scope check failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Vec::new(),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn deliver_broadcast(&self, b: DbBroadcast) {
        let key = TopicKey {
            private: b.private,
            topic: format!("realtime:{}", b.topic).into(),
        };
        let msg = Broadcast {
            event: b.event,
            payload: BroadcastPayload::Json(b.payload),
            meta: Some(serde_json::json!({ "id": b.id })),
            binary_origin: true,
        };
        self.router.broadcast(&key, &msg, None);
    }

    fn deliver_change(&self, p: &Planned, vis: &[Visibility]) {
        let metrics = self.router.metrics();
        let mut shapes: HashMap<ShapeKey, Option<Box<RawValue>>> = HashMap::new();
        // Encode once per distinct frame: members of one topic with the same ids, serializer
        // and visibility shape share the bytes.
        let mut frames: HashMap<(ShapeKey, Vsn, &str, &[u32]), WireFrame> = HashMap::new();
        // Counted once per change, not per receiver.
        let (mut sent, mut hidden) = (0u64, 0u64);
        for (m, &vi) in p.matched.iter().zip(&p.viewer_of) {
            let Some(v) = vis.get(vi).filter(|v| v.visible) else {
                hidden += 1;
                continue;
            };
            let shape_key = (
                v.columns
                    .as_ref()
                    .map(|c| Arc::as_ptr(c) as *const u8 as usize),
                v.old_visible,
            );
            let frame_key = (shape_key, m.member.vsn, &*m.member.topic, m.ids.as_slice());
            let frame = match frames.get(&frame_key) {
                Some(frame) => frame.clone(),
                None => {
                    let data = shapes
                        .entry(shape_key)
                        .or_insert_with(|| change_data(&p.change, &p.table, v));
                    let Some(data) = data else { continue };
                    let payload = ChangePayload { ids: &m.ids, data };
                    let frame = protocol::encode(
                        m.member.vsn,
                        None,
                        None,
                        &m.member.topic,
                        "postgres_changes",
                        &payload,
                    );
                    frames.insert(frame_key, frame.clone());
                    frame
                }
            };
            sent += u64::from(self.router.push(&m.member.outbox, m.member.conn_id, frame));
        }
        metrics.message_out("postgres_changes", sent);
        metrics.dropped("row_scope", hidden);
        if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(&p.change.commit_timestamp) {
            let lag = chrono::Utc::now().signed_duration_since(ts);
            metrics
                .fanout_latency
                .observe(lag.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
    }
}

/// Which columns (by identity of the allowed list) and whether the old row is shown.
type ShapeKey = (Option<usize>, bool);

#[derive(Serialize)]
struct ChangePayload<'a> {
    ids: &'a [u32],
    data: &'a RawValue,
}

/// The `data` object of a `postgres_changes` frame for one visibility shape.
#[derive(Serialize)]
struct ChangeData<'a> {
    schema: &'a str,
    table: &'a str,
    commit_timestamp: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    columns: Vec<ColumnOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_record: Option<Map<String, Value>>,
    errors: Option<Vec<&'static str>>,
}

#[derive(Serialize)]
struct ColumnOut<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    type_name: &'a str,
}

fn allowed(columns: &Option<Arc<[String]>>, name: &str) -> bool {
    columns.as_ref().is_none_or(|c| c.iter().any(|n| n == name))
}

fn project(row: &Map<String, Value>, keep: impl Fn(&str) -> bool) -> Map<String, Value> {
    row.iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn json_size(row: &Map<String, Value>) -> usize {
    row.iter()
        .map(|(k, v)| k.len() + v.to_string().len() + 4)
        .sum()
}

/// Supabase's answer for INSERT/UPDATE on a table without a primary key: no row data.
#[derive(Serialize)]
struct NoPrimaryKey<'a> {
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    errors: [&'static str; 1],
}

fn change_data(change: &Change, table: &TableInfo, v: &Visibility) -> Option<Box<RawValue>> {
    if table.primary_key.is_empty() && change.op != Op::Delete {
        let data = NoPrimaryKey {
            schema: &change.schema,
            table: &change.table,
            kind: change.op.as_str(),
            errors: [NO_PRIMARY_KEY],
        };
        return serde_json::value::to_raw_value(&data).ok();
    }
    let cols = &v.columns;
    let mut record = change
        .record
        .as_ref()
        .map(|r| project(r, |k| allowed(cols, k)));
    let mut old_record = change.old_record.as_ref().map(|r| {
        if v.old_visible {
            project(r, |k| allowed(cols, k))
        } else {
            project(r, |k| table.primary_key.iter().any(|pk| pk == k))
        }
    });
    if change.op == Op::Insert {
        old_record = None;
    }
    if change.op == Op::Delete {
        record = None;
    }
    let mut errors = None;
    let too_large = |r: &Option<Map<String, Value>>| {
        r.as_ref().is_some_and(|r| json_size(r) > MAX_RECORD_BYTES)
    };
    if too_large(&record) || too_large(&old_record) {
        let shrink = |r: &mut Option<Map<String, Value>>| {
            if let Some(r) = r {
                r.retain(|_, v| v.to_string().len() <= MAX_FIELD_BYTES_WHEN_TOO_LARGE);
            }
        };
        shrink(&mut record);
        shrink(&mut old_record);
        errors = Some(vec![PAYLOAD_TOO_LARGE]);
    }
    let data = ChangeData {
        schema: &change.schema,
        table: &change.table,
        commit_timestamp: &change.commit_timestamp,
        kind: change.op.as_str(),
        columns: table
            .columns
            .iter()
            .filter(|c| allowed(cols, &c.name))
            .map(|c| ColumnOut {
                name: &c.name,
                type_name: &c.type_name,
            })
            .collect(),
        record,
        old_record,
        errors,
    };
    serde_json::value::to_raw_value(&data).ok()
}
