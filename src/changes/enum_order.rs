//! The label order of the enum columns that `lt`/`lte`/`gt`/`gte` filters compare by. A
//! filter is bound at join, but DDL can change the order under it while it stays
//! subscribed: `ALTER TYPE … ADD VALUE` puts a label between two others, and a column
//! retyped to another enum orders its labels anew. Every such filter on one column shares
//! one `EnumOrder`; whenever the rules version moves (any DDL), dispatch reads those
//! columns' labels again before it matches the batch that carried the new version, so
//! a change written after the DDL is compared as Postgres would compare it then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use deadpool_postgres::Pool;

/// The labels of each (schema, table, column), `$1`..`$3` aligned, numbered from 1 by
/// position: the column's enum type (or the enum under its domain) in sort order; an
/// empty array when the column is no longer an enum. Columns that are gone give no row.
const LABELS: &str = "select u.i::int8, \
       array(select e.enumlabel::text from pg_catalog.pg_enum e \
             where e.enumtypid = coalesce(nullif(ty.typbasetype, 0::oid), ty.oid) \
             order by e.enumsortorder) \
     from unnest($1::text[], $2::text[], $3::text[]) with ordinality as u(s, t, c, i) \
     join pg_catalog.pg_namespace n on n.nspname = u.s \
     join pg_catalog.pg_class r on r.relnamespace = n.oid and r.relname = u.t \
     join pg_catalog.pg_attribute a on a.attrelid = r.oid and a.attname = u.c \
          and a.attnum > 0 and not a.attisdropped \
     join pg_catalog.pg_type ty on ty.oid = a.atttypid";

const RULES_SETTLED: &str = "select realtime.rules_settled()";

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

    /// The labels now.
    pub fn labels(&self) -> Arc<[String]> {
        self.labels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, labels: Arc<[String]>) {
        *self.labels.write().unwrap_or_else(|p| p.into_inner()) = labels;
    }
}

type Column = (String, String, String);

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

    /// Reads every shared column's labels again when `version` is one not read under
    /// yet. A failed read keeps the labels as they were (and is tried on the next
    /// version).
    pub async fn refresh(&self, pool: &Pool, version: i64) {
        if self.read_at.load(Ordering::Acquire) == version {
            return;
        }
        let columns: Vec<(Column, Arc<EnumOrder>)> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if columns.is_empty() {
            self.read_at.store(version, Ordering::Release);
            return;
        }
        let part = |f: fn(&Column) -> &String| -> Vec<&str> {
            columns.iter().map(|(c, _)| f(c).as_str()).collect()
        };
        let (schemas, tables, names) = (part(|c| &c.0), part(|c| &c.1), part(|c| &c.2));
        // As for row-scope rules (sql/071): labels read while the DDL that moved the
        // version is uncommitted are those from before it, so they count for this batch
        // only and are read again for the next.
        let read = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            let settled: bool = client
                .query_one(RULES_SETTLED, &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            let rows = client
                .query(LABELS, &[&schemas, &tables, &names])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((settled, rows))
        }
        .await;
        let (settled, rows) = match read {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "could not read enum labels again; filters keep their order");
                return;
            }
        };
        for row in rows {
            let at: i64 = row.get(0);
            let labels: Vec<String> = row.get(1);
            let Some((_, order)) = usize::try_from(at - 1).ok().and_then(|i| columns.get(i)) else {
                continue;
            };
            // No longer an enum: its filters stay as they were bound.
            if !labels.is_empty() {
                order.set(labels.into());
            }
        }
        if settled {
            self.read_at.store(version, Ordering::Release);
        }
    }
}
