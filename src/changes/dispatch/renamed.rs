//! Subscriptions follow their table when DDL renames it (`ALTER TABLE … RENAME`, `SET
//! SCHEMA`, `ALTER SCHEMA … RENAME`), as Supabase's, which name the table by oid: its
//! changes are logged under the new name from the DDL's commit on, so before matching a
//! batch written after DDL, dispatch asks the names the subscribed tables have now and
//! moves the subscriptions of a table renamed. Their changes then carry the new name, as
//! Supabase's do; a rejoin by the old name is refused as any join to a missing table.

use std::sync::atomic::{AtomicI64, Ordering};

use super::Dispatcher;
use crate::changes::index::TableScope;

/// The rules version the subscribed tables' names were last read under.
pub(in crate::changes) struct Renamed {
    read_at: AtomicI64,
}

impl Default for Renamed {
    fn default() -> Self {
        Renamed {
            read_at: AtomicI64::new(i64::MIN),
        }
    }
}

impl Dispatcher {
    /// Before matching a batch read under rules version `version`, or, when its rows were
    /// written under different versions (`None`), under the version of now: what DDL
    /// changed under live filters (enum labels) and subscriptions (table names).
    pub(super) async fn follow_ddl(&self, version: Option<i64>) {
        let version = match version {
            Some(v) => v,
            None => match self.rls.refresh().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the rules version");
                    return;
                }
            },
        };
        self.catalog.refresh_enum_orders(version).await;
        self.follow_renames(version).await;
    }

    /// Moves the subscriptions of each table renamed since the names were read (once
    /// per rules version, counted only once the DDL that moved it has committed).
    async fn follow_renames(&self, version: i64) {
        if self.renamed.read_at.load(Ordering::Acquire) == version {
            return;
        }
        let tables = self.index.tables();
        let mut oids: Vec<u32> = tables.iter().map(|(_, oid)| *oid).collect();
        oids.sort_unstable();
        oids.dedup();
        let settled = if oids.is_empty() {
            true
        } else {
            match self.catalog.table_names(&oids).await {
                Ok((names, settled)) => {
                    for (from, oid) in &tables {
                        let Some((schema, table)) = names.get(oid) else {
                            continue;
                        };
                        let to = TableScope::Table {
                            schema: schema.as_str().into(),
                            table: table.as_str().into(),
                        };
                        if to != *from {
                            tracing::info!(?from, ?to, "subscriptions follow a renamed table");
                            self.progress.at_cut(|_| self.index.rename(from, *oid, &to));
                        }
                    }
                    settled
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read subscribed tables' names");
                    false
                }
            }
        };
        if settled {
            self.renamed.read_at.store(version, Ordering::Release);
        }
    }
}
