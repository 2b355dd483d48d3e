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
mod filter;
mod index;
mod payload;
mod row;
mod scope;
mod subscribe;

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use catalog::{Catalog, CatalogError, TableInfo, CAPTURE_TRIGGER};
pub use filter::{parse as parse_filter, BoundFilter, Filter};
pub use index::{Subscriber, Subscription, TableScope};
pub use row::{format_commit_time, Change, ColumnInfo, DbBroadcast, DbEvent, LogBatch, Op, Row};
pub use scope::{RlsChecker, RlsError, Viewer, Visibility};
pub use subscribe::{quote_ident, Validated};

use crate::router::{MemberId, Router};

/// The postgres_changes side of the hub; cheap to clone.
#[derive(Clone)]
pub struct Changes {
    index: Arc<index::SubscriptionIndex>,
    /// `None` when the hub runs without a database.
    catalog: Option<Catalog>,
}

impl Changes {
    /// Without a database every entry of a join is answered as unavailable.
    pub fn new(catalog: Option<Catalog>) -> Changes {
        Changes {
            index: Arc::default(),
            catalog,
        }
    }

    /// Validates a join's `postgres_changes` entries against the catalog.
    pub async fn validate(&self, entries: &[Value]) -> Validated {
        subscribe::validate(self.catalog.as_ref(), entries).await
    }

    /// Starts delivering `subscriptions` to `subscriber` (replacing what its member had).
    pub fn subscribe(&self, subscriber: Subscriber, subscriptions: Vec<Subscription>) {
        self.index.add(subscriber, subscriptions);
    }

    /// Stops every delivery to `member`; a no-op for members without subscriptions.
    pub fn unsubscribe(&self, member: MemberId) {
        self.index.remove(member);
    }

    /// A refreshed token: row scope is judged with `viewer` from now on.
    pub fn set_viewer(&self, member: MemberId, viewer: Arc<Viewer>) {
        self.index.set_viewer(member, viewer);
    }

    /// The dispatch loop: matches each captured batch, checks row scope and queues frames
    /// (and routes database broadcasts to `router`) until `events` closes or `shutdown`.
    pub async fn run_dispatch(
        &self,
        router: Arc<Router>,
        rls: RlsChecker,
        events: mpsc::Receiver<LogBatch>,
        shutdown: CancellationToken,
    ) {
        let Some(catalog) = self.catalog.clone() else {
            return;
        };
        let d = dispatch::Dispatcher {
            index: self.index.clone(),
            router,
            catalog,
            rls,
        };
        dispatch::run_dispatch(d, events, shutdown).await;
    }
}
