//! The frames one channel would have received for past log events: the same matching,
//! row scope (judged with the channel's current claims) and encoding as live dispatch,
//! for one subscriber. Resumed subscriptions replay through this; it decides nothing
//! about positions.

use std::sync::Arc;

use super::dispatch::{broadcast_key, change_frame, db_broadcast};
use super::index::Subscription;
use super::payload::{change_data, Conversions, FieldSizes};
use super::row::{DbBroadcast, DbEvent};
use super::scope::{RlsError, Viewer};
use super::Changes;
use crate::protocol::{self, Vsn, WireFrame};
use crate::router::TopicKey;

/// The channel a replay is for.
pub struct ReplayTarget {
    pub key: TopicKey,
    pub vsn: Vsn,
    pub viewer: Arc<Viewer>,
    pub subscriptions: Vec<Subscription>,
}

/// Frames for `events` in log order, and how many changes and broadcasts they carry.
pub struct Replayed {
    pub frames: Vec<WireFrame>,
    pub count: usize,
}

impl Changes {
    /// What `target` would have received for `events` (row scope judged now, with its
    /// claims). Database broadcasts to its topic are marked `replayed`. The events are
    /// only read, so resumes of one gap can share them (`Recent`).
    pub async fn replay(
        &self,
        target: &ReplayTarget,
        events: &[&DbEvent],
    ) -> Result<Replayed, RlsError> {
        let (Some(catalog), Some(rls)) = (&self.catalog, &self.rls) else {
            return Ok(Replayed {
                frames: Vec::new(),
                count: 0,
            });
        };
        // Which events reach the channel, before asking about row scope.
        let mut picked = Vec::new();
        for event in events {
            match event {
                DbEvent::Broadcast(b) if broadcast_key(b) == target.key => {
                    picked.push(Picked::Broadcast(b.clone()));
                }
                DbEvent::Broadcast(_) => {}
                DbEvent::Change(c) => {
                    // One frame per distinct `select`, as live dispatch sends them.
                    let mut groups: Vec<Group> = Vec::new();
                    for s in target.subscriptions.iter().filter(|s| s.matches(c)) {
                        match groups.iter_mut().find(|(select, _)| *select == s.select) {
                            Some((_, ids)) => ids.push(s.id),
                            None => groups.push((s.select.clone(), vec![s.id])),
                        }
                    }
                    if groups.is_empty() {
                        continue;
                    }
                    if let Some(table) = catalog.table(&c.schema, &c.table).await? {
                        picked.push(Picked::Change(c, table, groups));
                    }
                }
            }
        }
        let viewers = [target.viewer.clone()];
        let items: Vec<super::scope::Item<'_>> = picked
            .iter()
            .filter_map(|p| match p {
                Picked::Change(c, table, _) => Some((*c, table.as_ref(), &viewers[..])),
                Picked::Broadcast(_) => None,
            })
            .collect();
        let visibility = rls.check(&items).await?;
        let mut vis = visibility.into_iter();
        let mut out = Replayed {
            frames: Vec::new(),
            count: 0,
        };
        for p in picked {
            match p {
                Picked::Broadcast(b) => {
                    if let Some(frame) = replayed_broadcast(target, b) {
                        out.frames.push(frame);
                        out.count += 1;
                    }
                }
                Picked::Change(c, table, groups) => {
                    let v = vis.next().unwrap_or_default();
                    let Some(v) = v.first().filter(|v| v.visible) else {
                        continue;
                    };
                    let sizes = FieldSizes::of(c);
                    let conversions = Conversions::of(&table);
                    for (select, ids) in &groups {
                        let data = change_data(c, &sizes, &table, &conversions, v, select.as_ref());
                        if let Some(data) = data {
                            let topic = &target.key.topic;
                            out.frames.push(change_frame(target.vsn, topic, ids, &data));
                        }
                    }
                    out.count += 1;
                }
            }
        }
        Ok(out)
    }
}

/// Subscription ids of one channel that share a `select`.
type Group = (Option<Arc<[String]>>, Vec<u32>);

enum Picked<'a> {
    Broadcast(DbBroadcast),
    Change(
        &'a super::row::Change,
        Arc<super::catalog::TableInfo>,
        Vec<Group>,
    ),
}

fn replayed_broadcast(target: &ReplayTarget, b: DbBroadcast) -> Option<WireFrame> {
    let mut msg = db_broadcast(b);
    if let Some(serde_json::Value::Object(meta)) = msg.meta.as_mut() {
        meta.insert("replayed".into(), serde_json::Value::Bool(true));
    }
    protocol::encode_broadcast(target.vsn, &target.key.topic, &msg)
}
