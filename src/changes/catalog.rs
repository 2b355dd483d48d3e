//! Table metadata read from the Postgres catalog: columns in attribute order, primary
//! key, REPLICA IDENTITY, row-level-security flags, whether change capture is on, and
//! which columns a role may select. Lookups are cached for `CACHE_TTL`, so a storm of
//! joins costs one query per table; every cached answer is dropped as soon as
//! `realtime.rules_version()` moves (any DDL: a publication change, `enable`, a new
//! replica identity), checked at most every `VERSION_CHECK`. "Not enabled" and "no such
//! table" are never cached: a table enabled a moment ago is served at once.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::OnceCell;
use tokio_postgres::Row;

use super::enum_order::EnumOrders;
use super::row::{ColumnInfo, Op};

/// How long a lookup (found or not) is served from memory.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// How often the rules version is read to decide whether cached answers are stale.
pub const VERSION_CHECK: Duration = Duration::from_millis(250);

/// Above this many cached keys, expired ones are dropped on the next insert.
const CACHE_PRUNE_AT: usize = 1024;

/// Tables in this schema are never captured (the hub's own log and messages live there):
/// `realtime.enable` refuses them and nothing offers to enable them.
pub const UNCAPTURED_SCHEMA: &str = "realtime";

/// Whether a table in `schema` can have change capture at all: not the hub's own, nor
/// Postgres's catalogs (which take no triggers), nor a session's temporary tables (as
/// `realtime.check_capturable` judges).
pub fn capturable(schema: &str) -> bool {
    schema != UNCAPTURED_SCHEMA
        && !matches!(schema, "pg_catalog" | "information_schema")
        && !schema.starts_with("pg_toast")
        && !schema.starts_with("pg_temp")
}

/// Name of one of the capture triggers that `realtime.enable` creates (its INSERT trigger).
pub const CAPTURE_TRIGGER: &str = "switchboard_capture_insert";

/// Whether schema `$1` exists and role `$2` may use it (false for a role that does not
/// exist).
const SCHEMA_USABLE: &str = "select exists (select 1 from pg_catalog.pg_namespace n \
     join pg_catalog.pg_roles r on r.rolname = $2 \
     where n.nspname = $1 and pg_catalog.has_schema_privilege(r.oid, n.oid, 'USAGE'))";

/// What `$1.$2` is when it is a relation realtime cannot capture (a view, a materialized
/// view, a foreign table) that role `$3` may select from; no row otherwise.
const OTHER_RELATION: &str = "select case c.relkind when 'v' then 'view' \
       when 'm' then 'materialized view' else 'foreign table' end \
     from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
     left join pg_catalog.pg_roles r on r.rolname = $3::text \
     where n.nspname = $1 and c.relname = $2 and c.relkind in ('v', 'm', 'f') \
       and ($3::text is null \
            or (pg_catalog.has_schema_privilege(r.oid, n.oid, 'USAGE') \
                and pg_catalog.has_table_privilege(r.oid, c.oid, 'SELECT')))";

/// A column's type as a name Postgres reads back, without its modifier.
const COLUMN_TYPE: &str =
    "select pg_catalog.format_type(a.atttypid, null) from pg_catalog.pg_attribute a \
     where a.attrelid = $1::oid and a.attname = $2 and a.attnum > 0 and not a.attisdropped";

/// The schema and name of each table of `$1` (oids) still there.
const TABLE_NAMES: &str = "select c.oid, n.nspname::text, c.relname::text \
     from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
     where c.oid = any($1::oid[])";

/// One table by exact schema and name: `$1` the capture trigger name, `$2` schema,
/// `$3` table. A table with the triggers that the view leaves out (it left the
/// publication; the triggers are not dropped yet) delivers no event.
const TABLE_BY_NAME: &str = "select n.nspname::text, c.relname::text, c.oid, c.relrowsecurity, c.relforcerowsecurity, \
           c.relkind = 'p' as partitioned, \
           e.events is not null as realtime_enabled, \
           c.relreplident::text as replica_identity, \
           array(select a.attname::text from pg_catalog.pg_index i \
                  cross join lateral unnest(i.indkey) with ordinality as k(attnum, pos) \
                  join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum \
                  where i.indrelid = c.oid and i.indisreplident \
                  order by k.pos) as identity_index, \
           array(select a.attname::text from pg_catalog.pg_attribute a \
                  where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
                  order by a.attnum) as column_names, \
           array(select ty.typname::text from pg_catalog.pg_attribute a \
                  join pg_catalog.pg_type ty on ty.oid = a.atttypid \
                  where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
                  order by a.attnum) as column_types, \
           array(select pg_catalog.json_build_object( \
                      'base', case when ty.typtype = 'd' then bt.typname::text end, \
                      'labels', (select pg_catalog.json_agg(e.enumlabel::text order by e.enumsortorder) \
                                   from pg_catalog.pg_enum e where e.enumtypid = bt.oid))::text \
                  from pg_catalog.pg_attribute a \
                  join pg_catalog.pg_type ty on ty.oid = a.atttypid \
                  cross join lateral (select coalesce( \
                      (with recursive d(t, depth) as ( \
                           select ty.typbasetype, 1 where ty.typtype = 'd' \
                           union all \
                           select b.typbasetype, d.depth + 1 from d \
                             join pg_catalog.pg_type b on b.oid = d.t and b.typtype = 'd') \
                       select d.t from d order by d.depth desc limit 1), \
                      ty.oid) as oid) base \
                  join pg_catalog.pg_type bt on bt.oid = base.oid \
                  where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
                  order by a.attnum) as column_bases, \
           array(select a.attname::text from pg_catalog.pg_index i \
                  cross join lateral unnest(i.indkey) with ordinality as k(attnum, pos) \
                  join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum \
                  where i.indrelid = c.oid and i.indisprimary \
                  order by k.pos) as primary_key, \
           coalesce(e.events, \
                    case when exists (select 1 from pg_catalog.pg_trigger t \
                                      where t.tgrelid = c.oid and t.tgname = $1::text) \
                         then '{}'::text[] end) as events \
         from pg_catalog.pg_class c \
         join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
         left join lateral (select e.events from realtime.enabled_tables e \
                            where e.relid = c.oid) e on true \
         where c.relkind in ('r', 'p') \
           and n.nspname = $2::text and c.relname = $3::text";

/// The columns of table `$1` (oid) that role `$2` may select, in attribute order (none
/// without USAGE on the table's schema: Postgres would refuse the read); no row when the
/// role does not exist.
const SELECTABLE_COLUMNS: &str =
    "select array(select a.attname::text from pg_catalog.pg_attribute a \
           join pg_catalog.pg_class c on c.oid = a.attrelid \
           where a.attrelid = $1::oid and a.attnum > 0 and not a.attisdropped \
             and pg_catalog.has_schema_privilege(r.oid, c.relnamespace, 'USAGE') \
             and pg_catalog.has_column_privilege(r.oid, $1::oid, a.attnum, 'SELECT') \
           order by a.attnum) \
         from pg_catalog.pg_roles r where r.rolname = $2::text";

const RULES_VERSION: &str = "select realtime.rules_version()";

/// Whether the `supabase_realtime` publication lists table `$1`.`$2` (as
/// `pg_publication_tables` lists it: a partitioned table without
/// `publish_via_partition_root` is listed as its partitions).
const PUBLISHED: &str = "select exists (select 1 from pg_catalog.pg_publication_tables p \
     where p.pubname = 'supabase_realtime' and p.schemaname = $1 and p.tablename = $2)";

/// Every table with realtime enabled: each row of `realtime.enabled_tables` as JSON, so
/// columns the view gains later (how a table was enabled) arrive without a code change.
const ENABLED_TABLES: &str = "select to_jsonb(e) from realtime.enabled_tables e \
         order by e.schema_name, e.table_name";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("catalog query: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl CatalogError {
    /// Postgres's message when it refused the text asked about (a character it cannot
    /// hold, SQLSTATE 22021): the asker's mistake, not an outage.
    pub fn bad_text(&self) -> Option<String> {
        match self {
            CatalogError::Postgres(e)
                if e.code()
                    == Some(&tokio_postgres::error::SqlState::CHARACTER_NOT_IN_REPERTOIRE) =>
            {
                Some(crate::db::pg_message(e))
            }
            _ => None,
        }
    }
}

/// A Postgres error as Supabase's Postgres client words it: `ERROR <code> (<name>) <message>`.
fn refusal_text(db: &tokio_postgres::error::DbError) -> String {
    let code = db.code().code();
    let name = match code {
        "22P02" => "invalid_text_representation",
        "22003" => "numeric_value_out_of_range",
        "22007" => "invalid_datetime_format",
        "22008" => "datetime_field_overflow",
        "22009" => "invalid_time_zone_displacement_value",
        "22001" => "string_data_right_truncation",
        "22021" => "character_not_in_repertoire",
        "22023" => "invalid_parameter_value",
        "2202E" => "array_subscript_error",
        "22P05" => "untranslatable_character",
        "23514" => "check_violation",
        "23502" => "not_null_violation",
        _ => "data_exception",
    };
    format!("{} {code} ({name}) {}", db.severity(), db.message())
}

/// What the hub needs to know about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub oid: u32,
    /// Attribute order, dropped columns left out.
    pub columns: Vec<ColumnInfo>,
    /// Column names in key order; empty when the table has no primary key.
    pub primary_key: Vec<String>,
    pub rls_enabled: bool,
    pub rls_forced: bool,
    /// Listed by `realtime.enabled_tables`: it has the capture triggers, unless it left
    /// the publication while they wait for a lock to go.
    pub realtime_enabled: bool,
    /// A partitioned table (its rows live in its partitions).
    pub partitioned: bool,
    pub replica_identity: ReplicaIdentity,
    /// The events its postgres_changes subscribers receive.
    pub events: Events,
}

/// The events a table delivers to postgres_changes subscribers: every one, unless it is
/// enabled only through the `supabase_realtime` publication and that publishes fewer
/// (`publish = 'insert'`, say), as Supabase's decoder is told (`realtime.enabled_tables`'s
/// `events`). Webhooks and the change feed choose their events themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events(u8);

impl Events {
    pub const ALL: Events = Events(0b111);

    fn bit(op: Op) -> u8 {
        match op {
            Op::Insert => 1,
            Op::Update => 2,
            Op::Delete => 4,
        }
    }

    /// From the view's names; `None` (a table not enabled) is every event.
    fn from_names(names: Option<Vec<String>>) -> Events {
        match names {
            None => Events::ALL,
            Some(names) => Events(
                names
                    .iter()
                    .filter_map(|n| Op::parse(n))
                    .fold(0, |bits, op| bits | Events::bit(op)),
            ),
        }
    }

    pub fn has(self, op: Op) -> bool {
        self.0 & Events::bit(op) != 0
    }
}

/// `ALTER TABLE ... REPLICA IDENTITY`: which columns of the old row an UPDATE or DELETE
/// shows (`old_record`), as Supabase's wal2json decoding does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key.
    Default,
    /// The whole old row.
    Full,
    /// The columns of the replica identity index.
    Index(Vec<String>),
    /// Nothing is logged by Postgres; the hub still sends the primary key (Supabase sends
    /// no UPDATE or DELETE event at all for such a table).
    Nothing,
}

impl TableInfo {
    /// The old-row columns an UPDATE or DELETE shows; `None` means every column.
    pub fn identity_columns(&self) -> Option<&[String]> {
        match &self.replica_identity {
            ReplicaIdentity::Full => None,
            ReplicaIdentity::Index(cols) => Some(cols),
            ReplicaIdentity::Default | ReplicaIdentity::Nothing => Some(&self.primary_key),
        }
    }
}

/// One row of `realtime.enabled_tables`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnabledTable {
    pub schema: String,
    pub table: String,
    /// How it was enabled (`publication` or `realtime.enable`), from the view's
    /// `enabled_via` column; `None` while the view has no such column.
    pub via: Option<String>,
    /// The events its postgres_changes subscribers receive (the view's `events`).
    pub events: Option<Vec<String>>,
}

impl EnabledTable {
    fn from_json(row: &serde_json::Value) -> Option<EnabledTable> {
        let text = |key: &str| row.get(key).and_then(serde_json::Value::as_str);
        Some(EnabledTable {
            schema: text("schema_name")?.to_owned(),
            table: text("table_name")?.to_owned(),
            via: text("enabled_via").map(str::to_owned),
            events: row
                .get("events")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
        })
    }
}

/// Cached catalog lookups; cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// By (schema, table); only enabled tables stay cached.
    tables: Cache<(String, String), Option<Arc<TableInfo>>>,
    /// The enabled-tables list (one key).
    enabled: Cache<(), Arc<Vec<EnabledTable>>>,
    /// By (table oid, role): the columns the role may select; `None`: no such role.
    selectable: Cache<(u32, String), Option<Arc<[String]>>>,
    /// The rules version (one key, read at most every `VERSION_CHECK`).
    version: Cache<(), i64>,
    /// The version the cached answers were read under. Short-held, never across an await.
    seen_version: Mutex<Option<i64>>,
    /// The label order of enum columns filtered by order, shared by their filters.
    enum_orders: EnumOrders,
}

type Cache<K, T> = Mutex<HashMap<K, Entry<T>>>;

/// One cached lookup: concurrent askers share the cell, so one query answers them all.
struct Entry<T> {
    created: Instant,
    cell: Arc<OnceCell<T>>,
}

impl Catalog {
    /// The pool lookups run on (row-scope checks share it).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub fn new(pool: Pool) -> Catalog {
        Catalog {
            inner: Arc::new(Inner {
                pool,
                tables: Mutex::new(HashMap::new()),
                enabled: Mutex::new(HashMap::new()),
                selectable: Mutex::new(HashMap::new()),
                version: Mutex::new(HashMap::new()),
                seen_version: Mutex::new(None),
                enum_orders: EnumOrders::default(),
            }),
        }
    }

    /// The label order of enum columns filtered by order (`enum_order`).
    pub fn enum_orders(&self) -> &EnumOrders {
        &self.inner.enum_orders
    }

    /// Reads the labels of the enum columns filtered by order again, from each table as
    /// `table` reads it (uncached), if the rules version `version` is new to them. Read
    /// while the DDL that moved the version is uncommitted (`rules_settled`), they count
    /// until the next batch only; a failed read keeps them as they were.
    pub async fn refresh_enum_orders(&self, version: i64) {
        let orders = &self.inner.enum_orders;
        let Some(columns) = orders.stale(version) else {
            return;
        };
        let read = async {
            let client = self.inner.pool.get().await?;
            let settled = rules_settled(&client).await?;
            let mut tables: HashMap<(&str, &str), Option<TableInfo>> = HashMap::new();
            for ((schema, table, column), order) in &columns {
                let info = match tables.entry((schema, table)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(read_table(&client, schema, table).await?)
                    }
                };
                // Gone, or no longer an enum: its filters stay as they were bound.
                let labels = info
                    .as_ref()
                    .and_then(|t| t.columns.iter().find(|c| c.name == *column))
                    .and_then(|c| c.labels.clone());
                if let Some(labels) = labels {
                    order.set(labels);
                }
            }
            Ok::<_, CatalogError>(settled)
        };
        match read.await {
            Ok(true) => orders.read_under(version),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read enum labels again; filters keep their order")
            }
        }
    }

    /// The schema and name each table of `oids` has now (tables dropped since are left
    /// out), and whether the DDL that moved the rules version has committed
    /// (`rules_settled`: until then the names read may not be the last).
    pub async fn table_names(
        &self,
        oids: &[u32],
    ) -> Result<(HashMap<u32, (String, String)>, bool), CatalogError> {
        let client = self.inner.pool.get().await?;
        let settled = rules_settled(&client).await?;
        let stmt = client.prepare_cached(TABLE_NAMES).await?;
        let names = client
            .query(&stmt, &[&oids])
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        Ok((names, settled))
    }

    /// `table`, read now (uncached).
    pub async fn table_now(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableInfo>, CatalogError> {
        let client = self.inner.pool.get().await?;
        read_table(&client, schema, table).await
    }

    /// The table `schema.table` (exact, case-sensitive names), or `None` if there is no
    /// such table.
    pub async fn table(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<Arc<TableInfo>>, CatalogError> {
        self.drop_stale().await;
        let key = (schema.to_owned(), table.to_owned());
        let fetch = async {
            let client = self.inner.pool.get().await?;
            Ok(read_table(&client, schema, table).await?.map(Arc::new))
        };
        let enabled = |t: &Option<Arc<TableInfo>>| t.as_ref().is_some_and(|t| t.realtime_enabled);
        cached(&self.inner.tables, key, CACHE_TTL, enabled, fetch).await
    }

    /// How Postgres reads `value` as the type of column `column` of the table with oid
    /// `table` (without its type modifier, as Supabase casts a filter value): the value's
    /// JSON text (a string's contents), `None` for NULL or no such column; the inner
    /// `Err` is Postgres's refusal, as Supabase words it (`ERROR 22P02
    /// (invalid_text_representation) invalid input syntax for type integer: "abc"`).
    pub async fn read_value(
        &self,
        table: u32,
        column: &str,
        value: &str,
    ) -> Result<Result<Option<String>, String>, CatalogError> {
        let client = self.inner.pool.get().await?;
        let stmt = client.prepare_cached(COLUMN_TYPE).await?;
        let Some(row) = client.query_opt(&stmt, &[&table, &column]).await? else {
            return Ok(Ok(None));
        };
        // `format_type` writes a type name Postgres reads back (quoted, qualified when
        // its schema is not on the search path).
        let type_name: String = row.get(0);
        let sql = format!("select pg_catalog.to_jsonb($1::text::{type_name}) #>> '{{}}'");
        match client.query_one(&sql, &[&value]).await {
            Ok(row) => Ok(Ok(row.get(0))),
            Err(e) => match e.as_db_error() {
                // Data exceptions and a domain's checks: the value is the asker's mistake.
                Some(db)
                    if db.code().code().starts_with("22") || db.code().code().starts_with("23") =>
                {
                    Ok(Err(refusal_text(db)))
                }
                _ => Err(e.into()),
            },
        }
    }

    /// Whether `schema` exists and `role` may use it (a schema-wide subscription of a
    /// schema that is not there, a typo say, is refused rather than silently empty).
    pub async fn schema_usable(&self, schema: &str, role: &str) -> Result<bool, CatalogError> {
        let client = self.inner.pool.get().await?;
        let stmt = client.prepare_cached(SCHEMA_USABLE).await?;
        Ok(client.query_one(&stmt, &[&schema, &role]).await?.get(0))
    }

    /// Whether the `supabase_realtime` publication lists `schema.name` (asked only when a
    /// join is refused, to say why: never on the delivery path).
    pub async fn published(&self, schema: &str, name: &str) -> Result<bool, CatalogError> {
        let client = self.inner.pool.get().await?;
        let stmt = client.prepare_cached(PUBLISHED).await?;
        Ok(client.query_one(&stmt, &[&schema, &name]).await?.get(0))
    }

    /// `view`, `materialized view` or `foreign table` when `schema.name` is one that
    /// `role` may select from (realtime captures tables only); `None`: any reader (service_role).
    pub async fn other_relation(
        &self,
        schema: &str,
        name: &str,
        role: Option<&str>,
    ) -> Result<Option<String>, CatalogError> {
        let client = self.inner.pool.get().await?;
        let stmt = client.prepare_cached(OTHER_RELATION).await?;
        Ok(client
            .query_opt(&stmt, &[&schema, &name, &role])
            .await?
            .map(|row| row.get(0)))
    }

    /// The columns of `table` that `role` may select, in attribute order; `None` when
    /// there is no such role.
    pub async fn selectable_columns(
        &self,
        table: &TableInfo,
        role: &str,
    ) -> Result<Option<Arc<[String]>>, CatalogError> {
        self.drop_stale().await;
        let key = (table.oid, role.to_owned());
        let fetch = async {
            let client = self.inner.pool.get().await?;
            let stmt = client.prepare_cached(SELECTABLE_COLUMNS).await?;
            let row = client.query_opt(&stmt, &[&table.oid, &role]).await?;
            Ok(row.map(|r| r.get::<_, Vec<String>>(0).into()))
        };
        cached(&self.inner.selectable, key, CACHE_TTL, |_| true, fetch).await
    }

    /// `table` (as `table` found it) with the columns `role` may select; `None` when there
    /// is no such table or the role may select none of its columns. One answer for both,
    /// so a token cannot learn which tables exist (a join's entries and the change feed).
    pub async fn visible_to(
        &self,
        table: Option<Arc<TableInfo>>,
        role: &str,
    ) -> Result<Option<(Arc<TableInfo>, Arc<[String]>)>, CatalogError> {
        let Some(table) = table else {
            return Ok(None);
        };
        let selectable = self.selectable_columns(&table, role).await?;
        Ok(selectable
            .filter(|c| !c.is_empty())
            .map(|columns| (table, columns)))
    }

    /// Tells the catalog the rules version a log read saw: answers cached under another
    /// are dropped at once, so the changes of that read are looked up under DDL that
    /// committed before them (a new `publish` option, say), not up to `VERSION_CHECK`
    /// late.
    /// Versions below zero (no event trigger: the clock's second, which a wake-up and a
    /// read may see differently) are left to `drop_stale`.
    pub fn observe(&self, version: i64) {
        if version >= 0 && self.note_version(version) {
            clear(&self.inner.version);
        }
    }

    /// Records `version` as the one cached answers were read under; true (and every
    /// cached answer dropped) when it moved.
    fn note_version(&self, version: i64) -> bool {
        let changed = {
            let mut seen = self
                .inner
                .seen_version
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let changed = seen.is_some_and(|v| v != version);
            *seen = Some(version);
            changed
        };
        if changed {
            clear(&self.inner.tables);
            clear(&self.inner.enabled);
            clear(&self.inner.selectable);
        }
        changed
    }

    /// Drops every cached answer when `realtime.rules_version()` moved since they were
    /// read (checked at most every `VERSION_CHECK`). A failed check keeps them.
    async fn drop_stale(&self) {
        let fetch = async {
            let client = self.inner.pool.get().await?;
            let stmt = client.prepare_cached(RULES_VERSION).await?;
            Ok(client.query_one(&stmt, &[]).await?.get::<_, i64>(0))
        };
        let Ok(version) = cached(&self.inner.version, (), VERSION_CHECK, |_| true, fetch).await
        else {
            return;
        };
        self.note_version(version);
    }
}

fn clear<K, T>(map: &Cache<K, T>) {
    map.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

impl Catalog {
    /// The tables `realtime.enabled_tables` lists, by schema and name.
    pub async fn enabled_tables(&self) -> Result<Arc<Vec<EnabledTable>>, CatalogError> {
        self.drop_stale().await;
        cached(&self.inner.enabled, (), CACHE_TTL, |_| true, async {
            let client = self.inner.pool.get().await?;
            let rows = client.query(ENABLED_TABLES, &[]).await?;
            Ok(Arc::new(
                rows.iter()
                    .filter_map(|r| EnabledTable::from_json(&r.get::<_, serde_json::Value>(0)))
                    .collect(),
            ))
        })
        .await
    }
}

/// Serves `key` from `map` while younger than `ttl`, else runs `fetch` once for all
/// concurrent askers. A failed fetch is not cached, nor an answer `keep` refuses (it still
/// answers the askers that shared it).
async fn cached<K, T, F>(
    map: &Cache<K, T>,
    key: K,
    ttl: Duration,
    keep: impl Fn(&T) -> bool,
    fetch: F,
) -> Result<T, CatalogError>
where
    K: Eq + Hash + Clone,
    T: Clone,
    F: Future<Output = Result<T, CatalogError>>,
{
    let cell = {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match map.get(&key) {
            Some(entry) if now.duration_since(entry.created) < ttl => entry.cell.clone(),
            _ => {
                if map.len() >= CACHE_PRUNE_AT {
                    map.retain(|_, e| now.duration_since(e.created) < ttl);
                }
                let cell = Arc::new(OnceCell::new());
                map.insert(
                    key.clone(),
                    Entry {
                        created: now,
                        cell: cell.clone(),
                    },
                );
                cell
            }
        }
    };
    let value = cell.get_or_try_init(|| fetch).await.cloned()?;
    if !keep(&value) {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|e| Arc::ptr_eq(&e.cell, &cell)) {
            map.remove(&key);
        }
    }
    Ok(value)
}

/// What `column_bases` says of one column: the type under a domain, and an enum's labels.
#[derive(Default, serde::Deserialize)]
struct ColumnBase {
    base: Option<String>,
    labels: Option<Vec<String>>,
}

/// The table `schema.table` as the catalog reads it, uncached.
async fn read_table(
    client: &deadpool_postgres::Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableInfo>, CatalogError> {
    let stmt = client.prepare_cached(TABLE_BY_NAME).await?;
    let row = client
        .query_opt(&stmt, &[&CAPTURE_TRIGGER, &schema, &table])
        .await?;
    Ok(row.map(|r| table_info(&r)))
}

/// Whether no DDL that moved the rules version is still uncommitted (sql/071): only then
/// does what is read from the catalog belong to the version observed before.
pub(super) async fn rules_settled(
    client: &deadpool_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached("select realtime.rules_settled()")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

fn table_info(row: &Row) -> TableInfo {
    let names: Vec<String> = row.get("column_names");
    let types: Vec<String> = row.get("column_types");
    let bases: Vec<String> = row.get("column_bases");
    TableInfo {
        schema: row.get(0),
        name: row.get(1),
        oid: row.get("oid"),
        columns: names
            .into_iter()
            .zip(types)
            .zip(bases)
            .map(|((name, type_name), base)| {
                let base: ColumnBase = serde_json::from_str(&base).unwrap_or_default();
                ColumnInfo {
                    name,
                    type_name,
                    base_type: base.base,
                    labels: base.labels.map(Into::into),
                }
            })
            .collect(),
        primary_key: row.get("primary_key"),
        rls_enabled: row.get("relrowsecurity"),
        rls_forced: row.get("relforcerowsecurity"),
        realtime_enabled: row.get("realtime_enabled"),
        partitioned: row.get("partitioned"),
        replica_identity: match row.get::<_, String>("replica_identity").as_str() {
            "f" => ReplicaIdentity::Full,
            "n" => ReplicaIdentity::Nothing,
            "i" => ReplicaIdentity::Index(row.get("identity_index")),
            _ => ReplicaIdentity::Default,
        },
        events: Events::from_names(row.get("events")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_tables_outside_the_hubs_and_postgress_own_schemas_are_capturable() {
        for schema in ["public", "crm", "pg", "realtime_app", "pgtemp"] {
            assert!(capturable(schema), "{schema}");
        }
        for schema in [
            "realtime",
            "pg_catalog",
            "information_schema",
            "pg_toast",
            "pg_toast_temp_3",
            "pg_temp_3",
        ] {
            assert!(!capturable(schema), "{schema}");
        }
    }

    #[test]
    fn an_enabled_tables_row_reads_its_names_and_how_it_was_enabled() {
        let row = json!({"schema_name": "public", "table_name": "jobs"});
        let t = EnabledTable::from_json(&row).unwrap();
        assert_eq!(
            (t.schema.as_str(), t.table.as_str(), t.via),
            ("public", "jobs", None)
        );
        let row =
            json!({"schema_name": "public", "table_name": "jobs", "enabled_via": "publication"});
        assert_eq!(
            EnabledTable::from_json(&row).unwrap().via.as_deref(),
            Some("publication")
        );
        assert!(EnabledTable::from_json(&json!({"table_name": "x"})).is_none());
        let row = json!({"schema_name": "public", "table_name": "jobs",
                         "enabled_via": "publication", "events": ["INSERT"]});
        assert_eq!(
            EnabledTable::from_json(&row).unwrap().events,
            Some(vec!["INSERT".to_owned()])
        );
    }

    #[test]
    fn a_tables_events_are_the_ones_its_view_row_names() {
        let names = |n: &[&str]| Some(n.iter().map(|s| s.to_string()).collect());
        let published = Events::from_names(names(&["INSERT", "DELETE"]));
        assert!(published.has(Op::Insert) && published.has(Op::Delete));
        assert!(!published.has(Op::Update));
        let none = Events::from_names(names(&[]));
        assert!([Op::Insert, Op::Update, Op::Delete]
            .iter()
            .all(|&op| !none.has(op)));
        assert_eq!(Events::from_names(None), Events::ALL);
        assert_eq!(
            Events::from_names(names(&["INSERT", "UPDATE", "DELETE"])),
            Events::ALL
        );
    }
}
