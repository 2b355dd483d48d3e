//! From captured log rows to client frames: match each change against the subscription
//! index in-process, check row scope for the matched subscribers only (one round trip per
//! batch), then encode once per visibility shape and queue for each member.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::catalog::{Catalog, TableInfo};
use super::index::{Matched, SubscriptionIndex};
use super::payload::{change_data, shape_key, ChangePayload, FieldSizes, ShapeKey};
use super::row::{Change, DbBroadcast, DbEvent, LogBatch};
use super::scope::{RlsChecker, Viewer, Visibility};
use super::stats::ChangeStats;
use crate::protocol::{self, Broadcast, BroadcastPayload, Vsn, WireFrame};
use crate::router::{Router, TopicKey};

/// One change with its matched members and their distinct viewers.
struct Planned {
    change: Change,
    table: Arc<TableInfo>,
    matched: Vec<Matched>,
    /// Index into `viewers` for each matched member.
    viewer_of: Vec<usize>,
    viewers: Vec<Arc<Viewer>>,
}

enum Step {
    Broadcast(DbBroadcast),
    Change(Planned),
}

/// What dispatch reads from and writes to.
pub struct Dispatcher {
    pub(super) index: Arc<SubscriptionIndex>,
    pub(super) router: Arc<Router>,
    pub(super) catalog: Catalog,
    pub(super) rls: RlsChecker,
    pub(super) stats: Arc<ChangeStats>,
}

/// Batches whose row-scope checks may be in flight at once (over the pool); delivery
/// still happens strictly in capture order.
const PIPELINE_DEPTH: usize = 4;

/// Consumes captured batches until the capture side hangs up or the hub shuts down.
pub async fn run_dispatch(
    d: Dispatcher,
    rx: mpsc::Receiver<LogBatch>,
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
                let steps = d.plan(batch.events).await;
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
        self.stats
            .count_changes(batch.iter().filter_map(|e| match e {
                DbEvent::Change(c) => Some((c.schema.as_str(), c.table.as_str())),
                DbEvent::Broadcast(_) => None,
            }));
        let mut steps = Vec::with_capacity(batch.len());
        for event in batch {
            let change = match event {
                DbEvent::Broadcast(b) => {
                    steps.push(Step::Broadcast(b));
                    continue;
                }
                DbEvent::Change(c) => c,
            };
            let matched = self.index.matching(&change);
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
            let mut distinct: HashMap<Arc<Viewer>, usize> = HashMap::new();
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
        let items: Vec<super::scope::Item<'_>> = steps
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
        let mut sizes: Option<FieldSizes> = None;
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
            let shape_key = shape_key(v);
            let frame_key = (shape_key, m.member.vsn, &*m.member.topic, m.ids.as_slice());
            let frame = match frames.get(&frame_key) {
                Some(frame) => frame.clone(),
                None => {
                    let data = shapes.entry(shape_key).or_insert_with(|| {
                        let sizes = sizes.get_or_insert_with(|| FieldSizes::of(&p.change));
                        change_data(&p.change, sizes, &p.table, v)
                    });
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
        let lag = chrono::Utc::now().signed_duration_since(p.change.commit_time);
        metrics
            .fanout_latency
            .observe(lag.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
    }
}
