//! Rendering changes for one reader outside the live path (the change feed): row scope
//! judged as for a WebSocket subscriber with the same claims (`RlsChecker`), and the
//! postgres_changes `data` built by `payload::change_data`, so both see the same rows
//! and columns. Also the old rows webhooks send, cut by the same rule. Thin on purpose:
//! the rules live in `scope` and `payload`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::catalog::{CatalogError, TableInfo};
use super::payload::{change_data, identity_row, Conversions, FieldSizes};
use super::row::Change;
use super::scope::{Item, RlsChecker, RlsError, Viewer, Visibility};
use super::Changes;

/// Whose view of the rows.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every row and column (a service_role reader).
    Everything,
    /// As row-level security and column privileges let this viewer see them.
    Viewer(Arc<Viewer>),
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Rls(#[from] RlsError),
    #[error("the hub has no database")]
    NoDatabase,
}

/// (a name a table had before a rename, its name now), each as (schema, table).
pub type Rename = ((String, String), (String, String));

/// The name a table has now, for a change logged under `(schema, table)`: the second of
/// the pair in `renames` whose first is that name (a name the table had before a rename),
/// else that name.
fn name_now<'a>(renames: &'a [Rename], schema: &'a str, table: &'a str) -> (&'a str, &'a str) {
    renames
        .iter()
        .find(|((s, t), _)| s == schema && t == table)
        .map_or((schema, table), |(_, (s, t))| (s.as_str(), t.as_str()))
}

impl Changes {
    /// The postgres_changes `data` of each change as `scope` may see it (`None`: hidden,
    /// or its table is gone), aligned with `changes`; one row-scope round trip. A change
    /// logged under a name its table had before a rename (the first of a pair in
    /// `renames`) is judged as the table it is now, and keeps the name it was logged
    /// under.
    pub async fn render(
        &self,
        rls: &RlsChecker,
        scope: &Scope,
        changes: &[Change],
        renames: &[Rename],
    ) -> Result<Vec<Option<Box<RawValue>>>, RenderError> {
        let catalog = self.catalog.as_ref().ok_or(RenderError::NoDatabase)?;
        let mut tables: HashMap<(&str, &str), Option<Arc<TableInfo>>> = HashMap::new();
        for c in changes {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                tables.entry((c.schema.as_str(), c.table.as_str()))
            {
                let (schema, table) = name_now(renames, &c.schema, &c.table);
                slot.insert(catalog.table(schema, table).await?);
            }
        }
        let table_of = |c: &Change| tables[&(c.schema.as_str(), c.table.as_str())].clone();
        let visibility: Vec<Visibility> = match scope {
            Scope::Everything => changes
                .iter()
                .map(|c| Visibility {
                    visible: c.judged_row().is_some(),
                    old_visible: true,
                    columns: None,
                    problem: None,
                })
                .collect(),
            Scope::Viewer(viewer) => {
                let viewers = std::slice::from_ref(viewer);
                let owned: Vec<(usize, Arc<TableInfo>)> = changes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| table_of(c).map(|t| (i, t)))
                    .collect();
                let items: Vec<Item<'_>> = owned
                    .iter()
                    .map(|(i, t)| (&changes[*i], t.as_ref(), viewers))
                    .collect();
                let checked = rls.check(&items).await?;
                let mut out = vec![Visibility::HIDDEN; changes.len()];
                for ((i, _), v) in owned.iter().zip(checked) {
                    out[*i] = v.into_iter().next().unwrap_or(Visibility::HIDDEN);
                }
                out
            }
        };
        Ok(changes
            .iter()
            .zip(&visibility)
            .map(|(c, v)| {
                let table = table_of(c)?;
                let conversions = Conversions::of(&table);
                v.visible
                    .then(|| {
                        change_data(c, &FieldSizes::of(c, &table), &table, &conversions, v, None)
                    })
                    .flatten()
            })
            .collect())
    }

    /// Cuts each change's `old_record` to the columns its table's REPLICA IDENTITY shows
    /// (the primary key by default, the whole row under FULL), as the WebSocket and the
    /// feed show it. Filters have judged the whole old row by then. A change whose table
    /// is gone keeps its old row as captured (its identity is unknown). Old names in
    /// `renames` are looked up as in [`Changes::render`].
    pub async fn cut_old_records(
        &self,
        changes: &mut [Change],
        renames: &[Rename],
    ) -> Result<(), RenderError> {
        let catalog = self.catalog.as_ref().ok_or(RenderError::NoDatabase)?;
        let mut tables: HashMap<(String, String), Option<Arc<TableInfo>>> = HashMap::new();
        for c in changes.iter_mut() {
            let Some(old) = c.old_record.as_ref() else {
                continue;
            };
            let key = (c.schema.clone(), c.table.clone());
            let table = match tables.get(&key) {
                Some(t) => t.clone(),
                None => {
                    let (schema, table) = name_now(renames, &c.schema, &c.table);
                    let t = catalog.table(schema, table).await?;
                    tables.insert(key, t.clone());
                    t
                }
            };
            if let Some(table) = table {
                c.old_record = Some(identity_row(&table, old));
            }
        }
        Ok(())
    }
}
