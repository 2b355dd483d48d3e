//! The label order of the enum columns that `lt`/`lte`/`gt`/`gte` filters compare by. A
//! filter is bound at join, but DDL can change the order under it while it stays
//! subscribed: `ALTER TYPE … ADD VALUE` puts a label between two others, and a column
//! retyped to another enum orders its labels anew. Every such filter on one column shares
//! one `EnumOrder`; whenever the rules version moves (any DDL), dispatch has the catalog
//! read those columns' labels again before it matches the batch that carried the new
//! version, so a change written after the DDL is compared as Postgres would compare it
//! then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One enum column's labels in their sort order, as last read.
#[derive(Debug)]
pub struct EnumOrder {
    labels: RwLock<Arc<[String]>>,
}

impl EnumOrder {
    pub fn new(labels: Arc<[String]>) -> EnumOrder {
        EnumOrder {
            labels: RwLock::new(labels),
        }
    }

    /// Runs `f` on the labels now, under the read lock (no copy: a filter on the
    /// column reads them for every change it judges).
    pub fn with_labels<T>(&self, f: impl FnOnce(&[String]) -> T) -> T {
        f(&self.labels.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn set(&self, labels: Arc<[String]>) {
        *self.labels.write().unwrap_or_else(|p| p.into_inner()) = labels;
    }
}

pub(super) type Column = (String, String, String);

/// The shared orders, by (schema, table, column). Kept for the hub's life: one small
/// entry per enum column ever filtered by order.
pub struct EnumOrders {
    by_column: Mutex<HashMap<Column, Arc<EnumOrder>>>,
    /// The rules version the labels were last read under.
    read_at: AtomicI64,
}

impl Default for EnumOrders {
    fn default() -> Self {
        EnumOrders {
            by_column: Mutex::new(HashMap::new()),
            read_at: AtomicI64::new(i64::MIN),
        }
    }
}

impl EnumOrders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Column, Arc<EnumOrder>>> {
        self.by_column.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The order every filter on `schema.table.column` shares: `order` (just read for a
    /// join) when the column has none yet.
    pub fn share(
        &self,
        schema: &str,
        table: &str,
        column: &str,
        order: &Arc<EnumOrder>,
    ) -> Arc<EnumOrder> {
        self.lock()
            .entry((schema.to_owned(), table.to_owned(), column.to_owned()))
            .or_insert_with(|| order.clone())
            .clone()
    }

    /// The shared columns and their orders when `version` is one their labels were not
    /// read under yet (`Catalog::refresh_enum_orders` reads them).
    pub(super) fn stale(&self, version: i64) -> Option<Vec<(Column, Arc<EnumOrder>)>> {
        if self.read_at.load(Ordering::Acquire) == version {
            return None;
        }
        Some(
            self.lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The labels were read again under `version`, once the DDL that moved it had
    /// committed.
    pub(super) fn read_under(&self, version: i64) {
        self.read_at.store(version, Ordering::Release);
    }
}
