//! What DDL changes under live subscriptions, followed before dispatch matches the
//! changes written after it (any DDL moves the rules version, which each batch carries):
//!
//! - the label order of enum columns that filters compare by order (`enum_order`);
//! - a table's name (`ALTER TABLE … RENAME`, `SET SCHEMA`, `ALTER SCHEMA … RENAME`): its
//!   changes are logged under the new name, and its subscriptions match there too (and
//!   still under the names before, for changes logged before the rename), as Supabase's
//!   follow the table's oid. Their changes carry the name they were logged under, as
//!   Supabase's do; a rejoin by the old name is refused as any join to a missing table. A
//!   name the table had only between two reads of the catalog (renamed twice while rows
//!   were written under the name in between) is never learnt: those rows are missed;
//! - the type of a column a filter compares (`ALTER COLUMN … TYPE`): the filter is bound
//!   again, as Supabase compares with the column's type of now. A filter the new type
//!   refuses (`n=eq.abc` once `n` is an integer) stays as it was, with a warning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use super::Dispatcher;
use crate::changes::catalog::{CatalogError, TableInfo};
use crate::changes::index::{Rebind, Subscription, TableScope};
use crate::changes::subscribe::{bind_filter, Unbound};

/// The rules version the subscribed tables were last read under, and the names they had
/// before.
pub(in crate::changes) struct Followed {
    read_at: AtomicI64,
    /// (schema, table) a subscribed table had -> its (schema, table) now.
    renamed: Mutex<HashMap<(String, String), (String, String)>>,
}

impl Default for Followed {
    fn default() -> Self {
        Followed {
            read_at: AtomicI64::new(i64::MIN),
            renamed: Mutex::new(HashMap::new()),
        }
    }
}

impl Followed {
    fn renamed(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (String, String)>> {
        self.renamed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Dispatcher {
    /// The table a change logged under `schema.table` is of: the table of that name, or,
    /// when there is none, the subscribed table that had the name before it was renamed
    /// (rows written before the rename, read after it).
    pub(super) async fn table_of(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<Arc<TableInfo>>, CatalogError> {
        if let Some(found) = self.catalog.table(schema, table).await? {
            return Ok(Some(found));
        }
        let now = self
            .ddl
            .renamed()
            .get(&(schema.to_owned(), table.to_owned()))
            .cloned();
        match now {
            Some((schema, table)) => self.catalog.table(&schema, &table).await,
            None => Ok(None),
        }
    }

    /// Before matching a batch read under rules version `version`, or, when its rows were
    /// written under different versions (`None`), under the version of now.
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
        if self.ddl.read_at.load(Ordering::Acquire) == version {
            return;
        }
        // Read while the DDL that moved the version is uncommitted (`rules_settled`),
        // the tables are read again for the next batch.
        let settled = match self.follow_renames().await {
            Ok(settled) => settled && self.follow_retypes().await,
            Err(e) => {
                tracing::warn!(error = %e, "could not read subscribed tables' names");
                false
            }
        };
        if settled {
            self.ddl.read_at.store(version, Ordering::Release);
        }
    }

    /// Moves the subscriptions of each table renamed; whether the names read are settled.
    async fn follow_renames(&self) -> Result<bool, crate::changes::CatalogError> {
        let tables = self.index.tables();
        let mut oids: Vec<u32> = tables.iter().map(|(_, oid)| *oid).collect();
        oids.sort_unstable();
        oids.dedup();
        if oids.is_empty() {
            return Ok(true);
        }
        let (names, settled) = self.catalog.table_names(&oids).await?;
        for (oid, (schema, table)) in &names {
            let to = TableScope::Table {
                schema: schema.as_str().into(),
                table: table.as_str().into(),
            };
            let mut renamed = self.ddl.renamed();
            for (scope, _) in tables.iter().filter(|(s, o)| o == oid && *s != to) {
                if let TableScope::Table {
                    schema: s,
                    table: t,
                } = scope
                {
                    renamed.insert(
                        (s.to_string(), t.to_string()),
                        (schema.clone(), table.clone()),
                    );
                }
            }
            renamed.remove(&(schema.clone(), table.clone()));
            drop(renamed);
            // Renamed, or renamed back: its subscriptions under the name of now go last.
            if tables.iter().any(|(s, o)| o == oid && *s != to) {
                tracing::debug!(oid, ?to, "subscriptions follow a renamed table");
                self.progress.at_cut(|_| self.index.rename(*oid, &to));
            }
        }
        Ok(settled)
    }

    /// Binds again each filter a column of which changed type; false when a table could
    /// not be read.
    async fn follow_retypes(&self) -> bool {
        let subs = self.index.rebindable();
        let mut tables: HashMap<TableScope, Option<TableInfo>> = HashMap::new();
        // By the old `Rebind`'s address: the filter bound again, and what from.
        let mut bound: HashMap<usize, (crate::changes::filter::BoundFilter, Arc<Rebind>)> =
            HashMap::new();
        for (scope, rebind) in subs {
            let TableScope::Table { schema, table } = &scope else {
                continue;
            };
            if !tables.contains_key(&scope) {
                match self.catalog.table_now(schema, table).await {
                    Ok(info) => tables.insert(scope.clone(), info),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read a subscribed table's columns");
                        return false;
                    }
                };
            }
            let Some(info) = tables.get(&scope).and_then(Option::as_ref) else {
                continue;
            };
            if !rebind.retyped(info) {
                continue;
            }
            match bind_filter(&self.catalog, &rebind.filter, info).await {
                Ok(filter) => {
                    let from = Arc::new(Rebind::new(rebind.filter.clone(), info));
                    bound.insert(Arc::as_ptr(&rebind) as usize, (filter, from));
                }
                Err(Unbound::Unavailable(e)) => {
                    tracing::warn!(error = %e, "could not bind a filter to a retyped column");
                    return false;
                }
                Err(Unbound::Filter(e)) => {
                    tracing::warn!(%schema, %table, error = %e, "a filter no longer binds to its table; it compares as before")
                }
                Err(Unbound::Refused(e)) => {
                    tracing::warn!(%schema, %table, error = %e, "a filter no longer binds to its table; it compares as before")
                }
            }
        }
        if !bound.is_empty() {
            tracing::info!(
                filters = bound.len(),
                "filters bound again to retyped columns"
            );
            self.progress.at_cut(|_| {
                self.index.rewrite(|sub| {
                    let rebind = sub.rebind.as_ref()?;
                    let (filter, from) = bound.get(&(Arc::as_ptr(rebind) as usize))?;
                    Some(Subscription {
                        filter: filter.clone(),
                        rebind: Some(from.clone()),
                        ..sub.clone()
                    })
                })
            });
        }
        true
    }
}
