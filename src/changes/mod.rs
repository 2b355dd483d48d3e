//! postgres_changes end to end: the row types the log holds, the subscription index and
//! filters, the table catalog, row scope (policies evaluated on the changed row), and
//! dispatch from captured batches to client frames. Owns neither the socket nor the log
//! reader: `capture` hands it batches over a channel, and frames go into the outboxes
//! that `router` defines.
//!
//! Other modules talk to it through [`Changes`]: validate a join's entries, subscribe a
//! channel (one call), unsubscribe it (one call), refresh its viewer.

mod catalog;
mod dispatch;
mod enum_order;
mod filter;
mod index;
mod keys;
mod lane;
mod logged;
mod payload;
mod recent;
mod recycle;
mod render;
mod replay;
mod row;
mod scope;
mod stats;
mod subscribe;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use catalog::{
    capturable, Catalog, CatalogError, EnabledTable, ReplicaIdentity, TableInfo, CAPTURE_TRIGGER,
};
pub use dispatch::{Mark, Progress};
pub use filter::{parse as parse_filter, BoundFilter, Filter};
pub use index::{subscription_id, Sent, Subscriber, Subscription, TableScope};
pub use lane::{LaneHold, LaneSettings};
pub use logged::{gap_len, into_events, LogEntry, StatementRows};
pub use recent::{entry_bytes, Batch, Gap, Recent};
pub use render::{Rename, RenderError, Scope};
pub use replay::{Narrowed, ReplayTarget, Replayed};
pub use row::{format_commit_time, Change, ColumnInfo, DbBroadcast, DbEvent, LogBatch, Op, Row};
pub use scope::{RlsChecker, RlsError, Viewer, Visibility};
pub use stats::{ChangeStats, Refused, TableName};
pub use subscribe::{quote_ident, Validated};

use crate::router::{MemberId, Router};

/// The postgres_changes side of the hub; cheap to clone.
#[derive(Clone)]
pub struct Changes {
    index: Arc<index::SubscriptionIndex>,
    /// `None` when the hub runs without a database.
    catalog: Option<Catalog>,
    /// Row-scope checks on the catalog's pool; `None` without a database.
    rls: Option<RlsChecker>,
    /// Written by dispatch and validation, read by the inspector.
    stats: Arc<ChangeStats>,
    /// Dispatch's place in the log; joins register at its cut.
    progress: Arc<Progress>,
}

/// Live postgres_changes subscriptions by what they name (see
/// [`Changes::subscription_counts`]).
#[derive(Debug, Default)]
pub struct SubscriptionCounts {
    tables: HashMap<TableName, usize>,
    schemas: HashMap<Arc<str>, usize>,
    all: usize,
}

impl SubscriptionCounts {
    /// The subscriptions that receive `table`'s changes: those naming it, its schema, or
    /// every table.
    pub fn covering(&self, table: &TableName) -> usize {
        self.tables.get(table).copied().unwrap_or(0)
            + self.schemas.get(&table.0).copied().unwrap_or(0)
            + self.all
    }
}

impl Changes {
    /// Without a database every entry of a join is answered as unavailable.
    pub fn new(catalog: Option<Catalog>) -> Changes {
        Changes {
            index: Arc::default(),
            rls: catalog.as_ref().map(|c| RlsChecker::new(c.pool().clone())),
            catalog,
            stats: Arc::default(),
            progress: Arc::default(),
        }
    }

    /// Dispatch's place in the log: the cut joins register at, and the last batch queued.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Validates a join's `postgres_changes` entries against the catalog, for a
    /// subscriber with Postgres role `role` (its `select` columns must be readable).
    pub async fn validate(&self, entries: &[Value], role: &str) -> Validated {
        subscribe::validate(self.catalog.as_ref(), entries, role, &self.stats).await
    }

    /// Starts delivering `subscriptions` to `subscriber` (replacing what its member had).
    pub fn subscribe(&self, subscriber: Subscriber, subscriptions: Vec<Subscription>) {
        self.index.add(subscriber, subscriptions);
    }

    /// `member`'s subscriptions now: a renamed table's under its names (`dispatch::ddl`).
    pub fn subscriptions_of(&self, member: MemberId) -> Vec<Subscription> {
        self.index.subscriptions_of(member)
    }

    /// Stops every delivery to `member`; a no-op for members without subscriptions.
    pub fn unsubscribe(&self, member: MemberId) {
        self.index.remove(member);
    }

    /// A refreshed token: row scope is judged with `viewer` from the next batch on (the
    /// index may move the member to another role or claim key, between two batches).
    pub fn set_viewer(&self, member: MemberId, viewer: Arc<Viewer>) {
        self.progress
            .at_cut(|_| self.index.set_viewer(member, viewer));
    }

    /// Changes read per table and joins refused as not enabled.
    pub fn stats(&self) -> &ChangeStats {
        &self.stats
    }

    /// Live postgres_changes subscriptions by what they name: a table, a whole schema, or
    /// every table.
    pub fn subscription_counts(&self) -> SubscriptionCounts {
        let mut out = SubscriptionCounts::default();
        for (scope, n) in self.index.counts() {
            match scope {
                TableScope::Table { schema, table } => {
                    *out.tables.entry((schema, table)).or_default() += n
                }
                TableScope::Schema(schema) => *out.schemas.entry(schema).or_default() += n,
                TableScope::All => out.all += n,
            }
        }
        out
    }

    /// The catalog; `None` without a database.
    pub fn catalog(&self) -> Option<&Catalog> {
        self.catalog.as_ref()
    }

    /// The tables `realtime.enabled_tables` lists; `None` without a database.
    pub async fn enabled_tables(&self) -> Option<Result<Arc<Vec<EnabledTable>>, CatalogError>> {
        match &self.catalog {
            Some(c) => Some(c.enabled_tables().await),
            None => None,
        }
    }

    /// The dispatch loop: matches each captured batch, checks row scope and queues frames
    /// (and routes database broadcasts to `router`) until `events` closes or `shutdown`.
    pub async fn run_dispatch(
        &self,
        router: Arc<Router>,
        events: mpsc::Receiver<LogBatch>,
        lane: LaneSettings,
        shutdown: CancellationToken,
    ) {
        let (Some(catalog), Some(rls)) = (self.catalog.clone(), self.rls.clone()) else {
            return;
        };
        let d = dispatch::Dispatcher {
            index: self.index.clone(),
            lane: lane::Lane::start(lane, router.clone()),
            router,
            catalog,
            rls,
            stats: self.stats.clone(),
            progress: self.progress.clone(),
            spare: Default::default(),
            memo: Default::default(),
            ddl: Default::default(),
        };
        dispatch::run_dispatch(d, events, shutdown).await;
    }
}

#[cfg(test)]
mod subscription_count_tests {
    use super::*;

    #[test]
    fn a_table_counts_subscriptions_to_it_its_schema_and_every_table() {
        let name = |s: &str, t: &str| -> TableName { (s.into(), t.into()) };
        let counts = SubscriptionCounts {
            tables: HashMap::from([(name("public", "jobs"), 2), (name("crm", "jobs"), 5)]),
            schemas: HashMap::from([("public".into(), 3)]),
            all: 1,
        };
        assert_eq!(counts.covering(&name("public", "jobs")), 2 + 3 + 1);
        assert_eq!(counts.covering(&name("public", "invoices")), 3 + 1);
        assert_eq!(counts.covering(&name("crm", "jobs")), 5 + 1);
    }
}
