//! Row scope: which subscribers may receive a captured row change. A batch of changes,
//! each with the viewers (role + JWT claims) whose subscriptions matched it, is judged
//! in one call to `realtime.visible_to` (sql/010_visibility.sql), which evaluates the
//! table's SELECT policies against the row as it was in the change, as each viewer.
//! Anything uncertain (unknown role, bad claims, a policy that errors) is "not visible";
//! a policy that raises for one viewer comes back with the problem named, for that viewer
//! only, so dispatch can tell that subscriber.
//!
//! Per (table, role) rules are cached until `realtime.rules_version()` changes (any DDL;
//! only rules read once the DDL that moved it has committed, see `catalog::rules_settled`):
//! "nothing", "every row" and policies that compare a column with a claim (`keys`:
//! `customer_id = auth.uid()`, `org_id = (auth.jwt() ->> 'org_id')::bigint`, ...) are
//! then decided in-process; only other policies go to Postgres. The same rules, as
//! [`Gates`] by table name, let the subscription index skip whom a rule hides and look
//! keyed viewers up by their claim value.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use serde_json::{Map, Value};
use tokio_postgres::types::Json;

use super::catalog::TableInfo;
use super::keys::{self, ClaimKey, Gate, RowKey};
use super::recycle::Recycled;
use super::row::{Change, Op, Row};
use crate::auth::Claims;

const VISIBLE_TO: &str = "select check_no, visible, old_visible, columns, problem \
     from realtime.visible_to($1::oid[], $2::jsonb[], $3::jsonb[], $4::int[], $5::text[], $6::text[])";

const RULES_VERSION: &str = "select realtime.rules_version()";

const RULES: &str = "select u.rel, u.role_name, r.mode, r.columns, \
       case when r.mode = 'rls' then realtime.row_keys(u.rel, u.role_name) end \
     from unnest($1::oid[], $2::text[]) as u(rel, role_name) \
     cross join lateral realtime.visibility_rule(u.rel, u.role_name) r";

#[derive(Debug, thiserror::Error)]
pub enum RlsError {
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("visibility check: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("visibility check returned an unknown check number {0}")]
    BadResult(i32),
    #[error(transparent)]
    Catalog(#[from] super::catalog::CatalogError),
}

/// Who is looking: the Postgres role and the JWT claims (JSON object text) that
/// `auth.uid()`, `auth.jwt()` and policies read from `request.jwt.claims`, plus
/// `auth.uid()` itself, read once from the `sub` claim. Equal when role and claims are.
#[derive(Debug)]
pub struct Viewer {
    pub role: Arc<str>,
    pub claims: Arc<str>,
    /// The `sub` claim as a uuid, as the standard `auth.uid()` reads it.
    pub uid: Option<uuid::Uuid>,
    /// `claims` parsed (`None`: Postgres would not read them as an object either).
    parsed: Option<Map<String, Value>>,
    /// Of role and claims, computed once: dispatch finds a change's distinct viewers by
    /// hashing one per receiver.
    hash: u64,
}

/// The process's seed for [`Viewer`] hashes (random, so clients cannot aim collisions).
fn viewer_hash(role: &str, claims: &str) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<foldhash::quality::RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(Default::default).hash_one((role, claims))
}

/// Roles are few: the viewers of one role share one `Arc` of its name, so a run of them
/// is told apart by pointer, not by comparing names (at 10,000 viewers per change that
/// compare was 4 % of the hub). Past `MAX_SHARED_ROLES` names a role gets its own.
fn shared_role(role: &str) -> Arc<str> {
    const MAX_SHARED_ROLES: usize = 1024;
    static ROLES: std::sync::OnceLock<Mutex<HashSet<Arc<str>>>> = std::sync::OnceLock::new();
    let mut roles = ROLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(r) = roles.get(role) {
        return r.clone();
    }
    let r: Arc<str> = role.into();
    if roles.len() < MAX_SHARED_ROLES {
        roles.insert(r.clone());
    }
    r
}

/// Whether two role names are the same: by pointer first (`shared_role`).
fn same_role(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

impl Viewer {
    pub fn new(role: &str, claims: &str, sub: Option<&str>) -> Viewer {
        Viewer {
            role: shared_role(role),
            claims: claims.into(),
            uid: sub.and_then(uid_of),
            parsed: claims_object(claims),
            hash: viewer_hash(role, claims),
        }
    }

    /// The hash of role and claims, computed once (equal viewers have equal ones).
    pub fn kept_hash(&self) -> u64 {
        self.hash
    }

    pub fn from_claims(c: &Claims) -> Viewer {
        Viewer {
            role: shared_role(&c.role),
            claims: c.json.clone(),
            uid: c.sub.as_deref().and_then(uid_of),
            parsed: claims_object(&c.json),
            hash: viewer_hash(&c.role, &c.json),
        }
    }

    /// The claims as a JSON object, as `request.jwt.claims::jsonb` reads them.
    pub fn claims_object(&self) -> Option<&Map<String, Value>> {
        self.parsed.as_ref()
    }

    /// This viewer's keys under `keys`, or `None` when Postgres must judge it.
    pub(super) fn keys_under(&self, keys: &[RowKey]) -> Option<Vec<ClaimKey>> {
        let claims = self.claims_object();
        let mine: Vec<ClaimKey> = keys.iter().map(|k| k.of_claims(claims)).collect();
        (!mine.contains(&ClaimKey::Unsure)).then_some(mine)
    }
}

/// `claims` as a JSON object, as `request.jwt.claims::jsonb` reads them; `None` when
/// Postgres would not read them (not an object, or a `\u0000` jsonb refuses).
fn claims_object(claims: &str) -> Option<Map<String, Value>> {
    if claims.contains("\\u0000") {
        return None;
    }
    match serde_json::from_str(claims) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

impl PartialEq for Viewer {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
            || (self.hash == other.hash
                && same_role(&self.role, &other.role)
                && self.claims == other.claims)
    }
}

impl Eq for Viewer {}

impl std::hash::Hash for Viewer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// `auth.uid()` of a `sub` claim: only the hyphenated form, which Postgres's uuid input
/// surely reads the same way.
fn uid_of(sub: &str) -> Option<uuid::Uuid> {
    (sub.len() == 36)
        .then(|| uuid::Uuid::parse_str(sub).ok())
        .flatten()
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
    /// Why the check failed for this viewer (a policy that raised with its claims), e.g.
    /// `policy by_team on public.jobs: invalid input syntax for type uuid: "x"`.
    pub problem: Option<Arc<str>>,
}

impl Visibility {
    pub const HIDDEN: Visibility = Visibility {
        visible: false,
        old_visible: false,
        columns: None,
        problem: None,
    };
}

/// How one role sees one table (from `realtime.visibility_rule` and `realtime.row_keys`).
#[derive(Debug, Clone)]
enum Rule {
    /// Nothing (unknown role, no privilege, no applicable policy, hidden primary key).
    Deny,
    /// Every row (no RLS, BYPASSRLS, owner), these columns.
    All(Option<Arc<[String]>>),
    /// Rows whose key equals the viewer's under any of `keys` (one per policy).
    Keyed {
        keys: Arc<[RowKey]>,
        columns: Option<Arc<[String]>>,
    },
    /// Anything else: evaluate the policies in Postgres.
    Policies,
}

impl Rule {
    fn gate(&self) -> Gate {
        match self {
            Rule::Deny => Gate::Nobody,
            Rule::All(_) | Rule::Policies => Gate::Open,
            Rule::Keyed { keys, .. } => Gate::Keyed(keys.clone()),
        }
    }
}

/// The cached rules as gates, by schema, table and role; unknown ones are open.
#[derive(Debug, Default, Clone)]
pub struct Gates(HashMap<String, HashMap<String, HashMap<String, Gate>>>);

impl Gates {
    pub fn get(&self, schema: &str, table: &str, role: &str) -> Gate {
        self.0
            .get(schema)
            .and_then(|t| t.get(table))
            .and_then(|r| r.get(role))
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct RuleCache {
    version: Option<i64>,
    rules: HashMap<(u32, String), Rule>,
    /// The same rules by name, shared with matching (replaced, never changed in place,
    /// while a batch holds it).
    gates: Arc<Gates>,
}

impl RuleCache {
    /// Forgets every rule when the rules version is not `version`.
    fn observe(&mut self, version: i64) {
        if self.version != Some(version) {
            self.rules.clear();
            self.gates = Arc::default();
            self.version = Some(version);
        }
    }
}

/// Runs visibility checks on pooled connections; cheap to clone.
#[derive(Clone)]
pub struct RlsChecker {
    pool: Pool,
    /// Held only between awaits, never across one.
    cache: Arc<Mutex<RuleCache>>,
    /// Answer vectors given back after delivery (`recycle`), for the next checks.
    spare: Arc<Recycled<Vec<Visibility>>>,
}

/// What row scope tells of one viewer's rows of one table before judging them: a row
/// ruled out here is one the check would hide.
#[derive(Debug, Clone)]
pub enum ScopeHint {
    /// Nothing of the table.
    Nothing,
    /// Only rows whose key equals the viewer's under one of `keys` (aligned with `mine`).
    Keyed {
        keys: Arc<[RowKey]>,
        mine: Vec<ClaimKey>,
    },
    /// Any row may be (every row, other policies, or claims Postgres must read).
    Any,
}

impl ScopeHint {
    /// The columns `may_see` reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        let keys = match self {
            ScopeHint::Keyed { keys, .. } => &keys[..],
            ScopeHint::Nothing | ScopeHint::Any => &[],
        };
        keys.iter().map(|k| k.column.as_str())
    }

    /// Whether the check may show `row` (it needs only `columns()` of it).
    pub fn may_see(&self, row: &Row) -> bool {
        match self {
            ScopeHint::Nothing => false,
            ScopeHint::Keyed { keys, mine } => keys::sees(keys, mine, row),
            ScopeHint::Any => true,
        }
    }
}

/// One change with the distinct viewers whose subscriptions matched it.
pub type Item<'a> = (&'a Change, &'a TableInfo, &'a [Arc<Viewer>]);

/// `old_visible` as the caller means it, from the two row checks.
fn old_visible(op: Op, visible: bool, old_row_visible: bool) -> bool {
    match op {
        Op::Insert => false,
        Op::Update => visible && old_row_visible,
        Op::Delete => visible,
    }
}

/// The flattened batch sent to `realtime.visible_to` (arrays aligned per item / check).
#[derive(Default)]
struct Batch<'a> {
    item_rel: Vec<u32>,
    item_row: Vec<Json<&'a Row>>,
    item_old: Vec<Option<Json<&'a Row>>>,
    check_item: Vec<i32>,
    check_role: Vec<&'a str>,
    check_claims: Vec<&'a str>,
    /// Per check: the (item, viewer) slots of the result it answers.
    targets: Vec<Vec<(usize, usize)>>,
}

impl RlsChecker {
    pub fn new(pool: Pool) -> Self {
        RlsChecker {
            pool,
            cache: Arc::default(),
            spare: Arc::default(),
        }
    }

    /// Gives back a change's answers once delivered: kept for later checks (bounded).
    pub fn recycle(&self, answers: Vec<Visibility>) {
        self.spare.give(answers);
    }

    /// Frees the answer vectors kept for later checks.
    pub fn release_spare(&self) {
        self.spare.release();
    }

    /// Every viewer of every item hidden (where each check starts), in vectors kept
    /// from earlier changes.
    fn hidden(&self, items: &[Item<'_>]) -> Vec<Vec<Visibility>> {
        items
            .iter()
            .map(|(_, _, viewers)| {
                let mut answers = self.spare.take();
                answers.resize(viewers.len(), Visibility::HIDDEN);
                answers
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RuleCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the cache the current rules version (each log read carries it): rules
    /// cached under another version are forgotten.
    pub fn observe(&self, version: i64) {
        self.lock().observe(version);
    }

    /// The cached rules as gates for matching (open where not known yet).
    pub fn gates(&self) -> Arc<Gates> {
        self.lock().gates.clone()
    }

    /// The rules for every (table, role) pair in `items`, fetching the ones not cached
    /// in one query (on `client`, opened if need be).
    async fn rules<'i>(
        &self,
        client: &mut Option<deadpool_postgres::Client>,
        items: impl Iterator<Item = (&'i TableInfo, &'i [Arc<Viewer>])> + Clone,
    ) -> Result<HashMap<(u32, String), Rule>, RlsError> {
        // One entry per (table, role), not per viewer: a change's viewers mostly share a
        // role, so runs of it are skipped before hashing.
        let mut wanted: foldhash::HashSet<(u32, &str)> = foldhash::HashSet::default();
        for (table, viewers) in items.clone() {
            let mut last: Option<&str> = None;
            for v in viewers.iter() {
                if !last.is_some_and(|r| same_role(r, &v.role)) {
                    last = Some(&v.role);
                    wanted.insert((table.oid, &v.role));
                }
            }
        }
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        let version = {
            let cache = self.lock();
            for &(rel, role) in &wanted {
                match cache.rules.get(&(rel, role.to_owned())) {
                    Some(rule) => {
                        found.insert((rel, role.to_owned()), rule.clone());
                    }
                    None => missing.push((rel, role)),
                }
            }
            cache.version
        };
        if missing.is_empty() {
            return Ok(found);
        }
        let names: HashMap<u32, (&str, &str)> = items
            .map(|(t, _)| (t.oid, (t.schema.as_str(), t.name.as_str())))
            .collect();
        let rels: Vec<u32> = missing.iter().map(|m| m.0).collect();
        let roles: Vec<&str> = missing.iter().map(|m| m.1).collect();
        let client = self.connection(client).await?;
        // Asked after `version` was observed and before the catalog is read: DDL that
        // moved the version before it committed leaves the rules it changed unread yet.
        let settled = match version {
            Some(_) => super::catalog::rules_settled(client).await?,
            None => false,
        };
        let stmt = client.prepare_cached(RULES).await?;
        let rows = client.query(&stmt, &[&rels, &roles]).await?;
        let mut fetched = Vec::with_capacity(rows.len());
        for row in rows {
            let rel: u32 = row.get(0);
            let role: String = row.get(1);
            let mode: String = row.get(2);
            let columns: Option<Vec<String>> = row.get(3);
            let columns: Option<Arc<[String]>> = columns.map(Into::into);
            let keys: Option<Json<Value>> = row.get(4);
            let keys = keys.and_then(|Json(k)| RowKey::parse_all(&k));
            let rule = match (mode.as_str(), keys) {
                ("all", _) => Rule::All(columns),
                ("rls", Some(keys)) => Rule::Keyed {
                    keys: keys.into(),
                    columns,
                },
                ("rls", None) => Rule::Policies,
                _ => Rule::Deny,
            };
            fetched.push(((rel, role), rule));
        }
        let mut cache = self.lock();
        // Rules fetched under an older version, or while DDL that moved the version was
        // uncommitted, are used for this batch only.
        let current = settled && cache.version == version;
        for ((rel, role), rule) in fetched {
            if current {
                if let Some((schema, table)) = names.get(&rel) {
                    Arc::make_mut(&mut cache.gates)
                        .0
                        .entry((*schema).to_owned())
                        .or_default()
                        .entry((*table).to_owned())
                        .or_default()
                        .insert(role.clone(), rule.gate());
                }
                cache.rules.insert((rel, role.clone()), rule.clone());
            }
            found.insert((rel, role), rule);
        }
        Ok(found)
    }

    /// The pooled connection in `slot`, opening one if there is none yet.
    async fn connection<'s>(
        &self,
        slot: &'s mut Option<deadpool_postgres::Client>,
    ) -> Result<&'s deadpool_postgres::Client, RlsError> {
        let client = match slot.take() {
            Some(c) => c,
            None => self.pool.get().await?,
        };
        Ok(slot.insert(client))
    }

    /// Visibility of each change for each of its viewers, under the rules of the current
    /// version (asked of Postgres first), in one round trip for the whole batch; the
    /// result is aligned with `items` and each item's viewers.
    pub async fn check(&self, items: &[Item<'_>]) -> Result<Vec<Vec<Visibility>>, RlsError> {
        if items.iter().all(|(_, _, viewers)| viewers.is_empty()) {
            return Ok(self.hidden(items));
        }
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RULES_VERSION).await?;
        let version: i64 = client.query_one(&stmt, &[]).await?.get(0);
        self.observe(version);
        self.judge(items, Some(client)).await
    }

    /// Asks Postgres for the current rules version and observes it, so that `hint` and
    /// `check_observed` judge by the rules of now; returns it.
    pub async fn refresh(&self) -> Result<i64, RlsError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RULES_VERSION).await?;
        let version: i64 = client.query_one(&stmt, &[]).await?.get(0);
        self.observe(version);
        Ok(version)
    }

    /// What row scope tells of `viewer`'s rows of `table` before judging any, under the
    /// rules of the version last observed (the rule is fetched if not cached): the rule
    /// `check_observed` then applies. Should the rules change in between (DDL racing a
    /// replay), a row must pass both: the race can hold a row back, never show one.
    pub async fn hint(
        &self,
        table: &TableInfo,
        viewer: &Arc<Viewer>,
    ) -> Result<ScopeHint, RlsError> {
        let viewers = std::slice::from_ref(viewer);
        let rules = self
            .rules(&mut None, std::iter::once((table, viewers)))
            .await?;
        Ok(match rules.get(&(table.oid, viewer.role.to_string())) {
            None | Some(Rule::Deny) => ScopeHint::Nothing,
            Some(Rule::All(_) | Rule::Policies) => ScopeHint::Any,
            Some(Rule::Keyed { keys, .. }) => match viewer.keys_under(keys) {
                Some(mine) => ScopeHint::Keyed {
                    keys: keys.clone(),
                    mine,
                },
                None => ScopeHint::Any,
            },
        })
    }

    /// [`RlsChecker::check`] under the rules of the version last observed (dispatch
    /// observes the version each log read carries): no round trip at all when every
    /// rule is cached and decided in-process.
    pub async fn check_observed(
        &self,
        items: &[Item<'_>],
    ) -> Result<Vec<Vec<Visibility>>, RlsError> {
        if items.iter().all(|(_, _, viewers)| viewers.is_empty()) {
            return Ok(self.hidden(items));
        }
        self.judge(items, None).await
    }

    async fn judge(
        &self,
        items: &[Item<'_>],
        mut client: Option<deadpool_postgres::Client>,
    ) -> Result<Vec<Vec<Visibility>>, RlsError> {
        let mut result = self.hidden(items);
        let tables = items.iter().map(|&(_, table, viewers)| (table, viewers));
        let fetched = self.rules(&mut client, tables).await?;
        let rules: foldhash::HashMap<(u32, &str), &Rule> = fetched
            .iter()
            .map(|((rel, role), rule)| ((*rel, role.as_str()), rule))
            .collect();
        let mut needs_db: HashSet<(usize, usize)> = HashSet::new();
        for (i, &(change, table, viewers)) in items.iter().enumerate() {
            let (row, old) = (change.judged_row(), change.judged_old_row());
            let Some(row) = row else {
                continue;
            };
            // The rule of the previous viewer's role: looked up again only when it changes.
            let mut last: Option<(&str, Option<&Rule>)> = None;
            for (v, viewer) in viewers.iter().enumerate() {
                let rule = match last {
                    Some((role, rule)) if same_role(role, &viewer.role) => rule,
                    _ => {
                        let rule = rules.get(&(table.oid, &*viewer.role)).copied();
                        last = Some((&viewer.role, rule));
                        rule
                    }
                };
                result[i][v] = match rule {
                    None | Some(Rule::Deny) => Visibility::HIDDEN,
                    Some(Rule::All(columns)) => Visibility {
                        visible: true,
                        old_visible: old_visible(change.op, true, old.is_some()),
                        columns: columns.clone(),
                        problem: None,
                    },
                    Some(Rule::Keyed { keys, columns }) => match viewer.keys_under(keys) {
                        Some(mine) => {
                            let visible = keys::sees(keys, &mine, row);
                            let old_ok = old.is_some_and(|o| keys::sees(keys, &mine, o));
                            Visibility {
                                visible,
                                old_visible: old_visible(change.op, visible, old_ok),
                                columns: columns.clone(),
                                problem: None,
                            }
                        }
                        None => {
                            needs_db.insert((i, v));
                            Visibility::HIDDEN
                        }
                    },
                    Some(Rule::Policies) => {
                        needs_db.insert((i, v));
                        Visibility::HIDDEN
                    }
                };
            }
        }
        let batch = Batch::build(items, &needs_db);
        if batch.targets.is_empty() {
            return Ok(result);
        }
        let client = self.connection(&mut client).await?;
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
            let old_row_visible: bool = row.get(2);
            let columns: Option<Vec<String>> = row.get(3);
            let columns: Option<Arc<[String]>> = columns.map(Into::into);
            let problem: Option<String> = row.get(4);
            let problem: Option<Arc<str>> = problem.map(Into::into);
            for &(item, viewer) in targets {
                result[item][viewer] = Visibility {
                    visible,
                    old_visible: old_visible(items[item].0.op, visible, old_row_visible),
                    columns: columns.clone(),
                    problem: problem.clone(),
                };
            }
        }
        Ok(result)
    }
}

impl<'a> Batch<'a> {
    /// Items without a row to judge get no check (they stay hidden); identical
    /// (role, claims) pairs of one item share one check.
    fn build(items: &'a [Item<'a>], needs_db: &HashSet<(usize, usize)>) -> Batch<'a> {
        let mut batch = Batch::default();
        for (item_idx, &(change, table, viewers)) in items.iter().enumerate() {
            let (row, old) = (change.judged_row(), change.judged_old_row());
            let Some(row) = row else { continue };
            if !(0..viewers.len()).any(|v| needs_db.contains(&(item_idx, v))) {
                continue;
            }
            batch.item_rel.push(table.oid);
            batch.item_row.push(Json(row));
            batch.item_old.push(old.map(Json));
            let item_no = i32::try_from(batch.item_rel.len()).unwrap_or(i32::MAX);
            let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
            for (viewer_idx, viewer) in viewers.iter().enumerate() {
                if !needs_db.contains(&(item_idx, viewer_idx)) {
                    continue;
                }
                let claims: &str = &viewer.claims;
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
