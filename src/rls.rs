//! Row scope: which subscribers may receive a captured row change. A batch of changes,
//! each with the viewers (role + JWT claims) whose subscriptions matched it, is judged
//! in one call to `realtime.visible_to` (sql/010_visibility.sql), which evaluates the
//! table's SELECT policies against the row as it was in the change, as each viewer.
//! Anything uncertain (unknown role, bad claims, a policy that errors) is "not visible".

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::{Map, Value};
use tokio_postgres::types::Json;

use crate::catalog::TableInfo;
use crate::router::change::{Change, Op};

const VISIBLE_TO: &str = "select check_no, visible, old_visible, columns \
     from realtime.visible_to($1::oid[], $2::jsonb[], $3::jsonb[], $4::int[], $5::text[], $6::text[])";

#[derive(Debug, thiserror::Error)]
pub enum RlsError {
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("visibility check: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("visibility check returned an unknown check number {0}")]
    BadResult(i32),
}

/// Who is looking: the Postgres role and the JWT claims (JSON object text) that
/// `auth.uid()`, `auth.jwt()` and policies read from `request.jwt.claims`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Viewer {
    pub role: String,
    pub claims: Arc<str>,
}

/// What one viewer may receive of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    /// May receive this event at all (new row for INSERT/UPDATE, old row for DELETE).
    pub visible: bool,
    /// May see the whole old row (UPDATE: the old row passed the same check; DELETE:
    /// same as `visible`). When false, send only the old row's primary key.
    pub old_visible: bool,
    /// `None`: every column; `Some`: only these columns may be sent.
    pub columns: Option<Arc<[String]>>,
}

impl Visibility {
    pub const HIDDEN: Visibility = Visibility {
        visible: false,
        old_visible: false,
        columns: None,
    };
}

/// Runs visibility checks on pooled connections; cheap to clone.
#[derive(Clone)]
pub struct RlsChecker {
    pool: Pool,
}

/// The flattened batch sent to `realtime.visible_to` (arrays aligned per item / check).
#[derive(Default)]
struct Batch<'a> {
    item_rel: Vec<u32>,
    item_row: Vec<Json<&'a Map<String, Value>>>,
    item_old: Vec<Option<Json<&'a Map<String, Value>>>>,
    check_item: Vec<i32>,
    check_role: Vec<&'a str>,
    check_claims: Vec<&'a str>,
    /// Per check: the (item, viewer) slots of the result it answers.
    targets: Vec<Vec<(usize, usize)>>,
}

impl RlsChecker {
    pub fn new(pool: Pool) -> Self {
        RlsChecker { pool }
    }

    /// Visibility of each change for each of its viewers, in one round trip for the
    /// whole batch; the result is aligned with `items` and each item's viewers.
    pub async fn check(
        &self,
        items: &[(&Change, &TableInfo, &[Viewer])],
    ) -> Result<Vec<Vec<Visibility>>, RlsError> {
        let mut result: Vec<Vec<Visibility>> = items
            .iter()
            .map(|(_, _, viewers)| vec![Visibility::HIDDEN; viewers.len()])
            .collect();
        let batch = Batch::build(items);
        if batch.targets.is_empty() {
            return Ok(result);
        }
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(VISIBLE_TO).await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &batch.item_rel,
                    &batch.item_row,
                    &batch.item_old,
                    &batch.check_item,
                    &batch.check_role,
                    &batch.check_claims,
                ],
            )
            .await?;
        for row in rows {
            let check_no: i32 = row.get(0);
            let targets = usize::try_from(check_no - 1)
                .ok()
                .and_then(|i| batch.targets.get(i))
                .ok_or(RlsError::BadResult(check_no))?;
            let visible: bool = row.get(1);
            let old_visible: bool = row.get(2);
            let columns: Option<Vec<String>> = row.get(3);
            let columns: Option<Arc<[String]>> = columns.map(Into::into);
            for &(item, viewer) in targets {
                let old_visible = match items[item].0.op {
                    Op::Insert => false,
                    Op::Update => visible && old_visible,
                    Op::Delete => visible,
                };
                result[item][viewer] = Visibility {
                    visible,
                    old_visible,
                    columns: columns.clone(),
                };
            }
        }
        Ok(result)
    }
}

impl<'a> Batch<'a> {
    /// Items without a row to judge and viewers with claims that are not a JSON object
    /// get no check (they stay hidden); identical (role, claims) pairs of one item share
    /// one check.
    fn build(items: &'a [(&'a Change, &'a TableInfo, &'a [Viewer])]) -> Batch<'a> {
        let mut batch = Batch::default();
        let mut claims_ok: HashMap<&str, bool> = HashMap::new();
        for (item_idx, &(change, table, viewers)) in items.iter().enumerate() {
            let (row, old) = match change.op {
                Op::Insert => (change.record.as_ref(), None),
                Op::Update => (change.record.as_ref(), change.old_record.as_ref()),
                Op::Delete => (change.old_record.as_ref(), None),
            };
            let Some(row) = row else { continue };
            if viewers.is_empty() {
                continue;
            }
            batch.item_rel.push(table.oid);
            batch.item_row.push(Json(row));
            batch.item_old.push(old.map(Json));
            let item_no = i32::try_from(batch.item_rel.len()).unwrap_or(i32::MAX);
            let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
            for (viewer_idx, viewer) in viewers.iter().enumerate() {
                let claims: &str = &viewer.claims;
                let valid = *claims_ok
                    .entry(claims)
                    .or_insert_with(|| is_json_object(claims));
                if !valid {
                    continue;
                }
                let check = *seen.entry((&viewer.role, claims)).or_insert_with(|| {
                    batch.check_item.push(item_no);
                    batch.check_role.push(&viewer.role);
                    batch.check_claims.push(claims);
                    batch.targets.push(Vec::new());
                    batch.targets.len() - 1
                });
                batch.targets[check].push((item_idx, viewer_idx));
            }
        }
        batch
    }
}

fn is_json_object(text: &str) -> bool {
    serde_json::from_str::<Map<String, Value>>(text).is_ok()
}
