//! Turning a join's `postgres_changes` entries into validated subscriptions: the reply
//! entries (echoed verbatim plus an integer `id`), and a clear error for each entry that
//! cannot be served (a table missing or unreadable for the role, which get one answer;
//! a table not enabled, or one in schema realtime, which cannot be; a bad filter; an
//! unknown column; a filter or `select` column the role may not read).

use std::sync::Arc;

use serde_json::Value;

use super::catalog::{capturable, Catalog, CatalogError, TableInfo};
use super::filter;
use super::index::{subscription_id, Rebind, Subscription, TableScope};
use super::row::Op;
use super::stats::ChangeStats;
use crate::protocol::{refuse_nul, ChangesError};

/// The outcome of validating a join's entries.
pub struct Validated {
    /// The reply's `postgres_changes` array.
    pub reply: Vec<Value>,
    pub subscriptions: Vec<Subscription>,
    /// One error per entry that could not be subscribed.
    pub errors: Vec<ChangesError>,
}

impl Validated {
    /// Some entry could not be checked because the catalog was unreachable (a moment's
    /// outage, unlike the other errors, which the same join meets again).
    pub fn unavailable(&self) -> bool {
        self.errors.contains(&ChangesError::Unavailable)
    }
}

/// `deals` -> `deals`; `My Table` -> `"My Table"` (Postgres identifier quoting).
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

fn str_field<'a>(entry: &'a Value, key: &str) -> Option<&'a str> {
    entry.get(key).and_then(Value::as_str)
}

/// As Supabase parses an entry: `schema`, `table` and `filter` are strings when given
/// (`null`: not given), and an entry names a schema or a table. A `table: ["jobs"]` read
/// as absent would subscribe the whole schema.
fn check_params(entry: &Value) -> Result<(), ChangesError> {
    let given = |key: &str| entry.get(key).filter(|v| !v.is_null());
    let mistyped = ["schema", "table", "filter"]
        .into_iter()
        .any(|key| given(key).is_some_and(|v| !v.is_string()));
    if !mistyped && (given("schema").is_some() || given("table").is_some()) {
        return Ok(());
    }
    let entry = if entry.get("user_token").is_some() || entry.get("auth_token").is_some() {
        "<redacted>".to_owned()
    } else {
        let text = entry.to_string();
        match text.char_indices().nth(SHOWN_ENTRY_CHARS) {
            Some((end, _)) => format!("{}…", &text[..end]),
            None => text,
        }
    };
    Err(ChangesError::NoParams { entry })
}

/// How much of a refused entry its error shows.
const SHOWN_ENTRY_CHARS: usize = 200;

/// Validates each entry against the catalog. Without a catalog (no database configured)
/// every entry is echoed and reported as unavailable. Entries refused because their
/// table is not enabled are counted in `stats`.
pub async fn validate(
    catalog: Option<&Catalog>,
    entries: &[Value],
    role: &str,
    stats: &ChangeStats,
) -> Validated {
    let mut out = Validated {
        reply: Vec::with_capacity(entries.len()),
        subscriptions: Vec::new(),
        errors: Vec::new(),
    };
    let mut selections: Vec<Arc<[String]>> = Vec::new();
    for entry in entries {
        let id = subscription_id(entry);
        let mut echoed = entry.clone();
        if let Value::Object(m) = &mut echoed {
            m.insert("id".into(), Value::from(id));
        }
        out.reply.push(echoed);
        let Some(catalog) = catalog else {
            out.errors.push(ChangesError::NoDatabase);
            continue;
        };
        match subscription(catalog, entry, id, role, stats).await {
            Ok(mut sub) => {
                // Bindings selecting the same columns share one list, so one frame
                // carries all their ids.
                if let Some(select) = &sub.select {
                    match selections.iter().find(|s| s[..] == select[..]) {
                        Some(same) => sub.select = Some(same.clone()),
                        None => selections.push(select.clone()),
                    }
                }
                out.subscriptions.push(sub)
            }
            Err(e) => out.errors.push(e),
        }
    }
    out
}

/// The entry's `select`: a list of column names (non-strings ignored, empty means all
/// columns, as Supabase reads it).
fn parse_select(entry: &Value) -> Result<Option<Vec<String>>, ChangesError> {
    match entry.get("select") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut names: Vec<String> = items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            names.sort();
            names.dedup();
            Ok((!names.is_empty()).then_some(names))
        }
        Some(_) => Err(ChangesError::SelectNotList),
    }
}

/// Checks every selected column exists and is among the role's `selectable` columns.
fn check_select(
    table: &super::TableInfo,
    selectable: &[String],
    role: &str,
    select: Vec<String>,
) -> Result<Arc<[String]>, ChangesError> {
    if let Some(unknown) = select
        .iter()
        .find(|c| !table.columns.iter().any(|t| &t.name == *c))
    {
        return Err(ChangesError::SelectUnknownColumn {
            column: unknown.clone(),
        });
    }
    if let Some(column) = select.iter().find(|c| !selectable.contains(c)) {
        return Err(ChangesError::SelectNotPermitted {
            column: column.clone(),
            role: role.to_owned(),
        });
    }
    Ok(select.into())
}

/// A catalog lookup that failed: the detail goes to the log, the client gets the
/// database-unavailable text (text Postgres refused is the client's mistake instead).
fn unavailable(e: super::catalog::CatalogError) -> ChangesError {
    if let Some(message) = e.bad_text() {
        return ChangesError::BadName(message);
    }
    tracing::warn!(error = %e, "postgres_changes join: catalog lookup failed");
    ChangesError::Unavailable
}

async fn subscription(
    catalog: &Catalog,
    entry: &Value,
    id: u32,
    role: &str,
    stats: &ChangeStats,
) -> Result<Subscription, ChangesError> {
    if !entry.is_object() {
        return Err(ChangesError::EntryNotObject);
    }
    check_params(entry)?;
    let select = parse_select(entry)?;
    let event = str_field(entry, "event")
        .unwrap_or("*")
        .to_ascii_uppercase();
    let event = Op::parse(&event);
    let schema = str_field(entry, "schema").unwrap_or("public");
    let table = str_field(entry, "table").unwrap_or("*");
    refuse_nul("schema", schema).map_err(ChangesError::BadName)?;
    refuse_nul("table", table).map_err(ChangesError::BadName)?;
    let filter_text = str_field(entry, "filter").unwrap_or("");
    refuse_nul("filter", filter_text).map_err(ChangesError::BadName)?;
    // Anywhere else in the entry too: a resumable channel keeps its entries in Postgres.
    if holds_nul(entry) {
        return Err(ChangesError::BadName(
            "the entry contains a NUL character".into(),
        ));
    }
    let parsed = filter::parse(filter_text)?;
    if schema == "*" || table == "*" {
        if select.is_some() {
            return Err(ChangesError::SelectWithWildcard);
        }
        if !parsed.columns().is_empty() {
            return Err(ChangesError::FilterNeedsTable {
                scope: format!("{schema}.{table}"),
            });
        }
        let scope = if schema == "*" {
            TableScope::All
        } else {
            if !catalog
                .schema_usable(schema, role)
                .await
                .map_err(unavailable)?
            {
                return Err(ChangesError::NoUsableSchema {
                    schema: schema.to_owned(),
                    role: role.to_owned(),
                });
            }
            TableScope::Schema(schema.into())
        };
        return Ok(Subscription {
            id,
            event,
            scope,
            filter: parsed.bind(&[])?,
            select: None,
            table_oid: None,
            rebind: None,
        });
    }
    let name = qualified(schema, table);
    let info = catalog.table(schema, table).await.map_err(unavailable)?;
    if info.as_ref().is_some_and(|t| !t.realtime_enabled) && capturable(schema) {
        // The inspector's count of wanted tables, whoever asked.
        stats.refused(schema, table, chrono::Utc::now());
    }
    let visible = catalog.visible_to(info, role).await.map_err(unavailable)?;
    let Some((info, selectable)) = visible else {
        // Told only to a role that may select from it, so it leaks nothing.
        let other = catalog.other_relation(schema, table, Some(role));
        if let Some(kind) = other.await.map_err(unavailable)? {
            return Err(ChangesError::NotATable { table: name, kind });
        }
        return Err(ChangesError::NoVisibleTable {
            table: name,
            role: role.to_owned(),
        });
    };
    if !info.realtime_enabled {
        let published = || async { catalog.published(schema, table).await.map_err(unavailable) };
        return Err(match (capturable(schema), info.partitioned) {
            (true, false) if published().await? => ChangesError::CaptureNotStarted { table: name },
            (true, false) => ChangesError::NotEnabled { table: name },
            (true, true) => ChangesError::NotEnabledPartitioned { table: name },
            (false, _) => ChangesError::NotCapturable {
                table: name,
                schema: schema.to_owned(),
            },
        });
    }
    // Which rows match a filter tells its column's values: only readable columns, checked
    // before the values are read as the column's type (a type error would tell it too).
    let hidden = parsed.columns().into_iter().find(|c| {
        info.columns.iter().any(|col| col.name == *c) && !selectable.iter().any(|s| s == c)
    });
    if let Some(hidden) = hidden {
        return Err(ChangesError::FilterNotPermitted {
            column: hidden.to_owned(),
            role: role.to_owned(),
        });
    }
    let filter = match bind_filter(catalog, &parsed, &info).await {
        Ok(filter) => filter,
        Err(Unbound::Filter(e)) => return Err(e.into()),
        Err(Unbound::Refused(message)) => {
            let select = match &select {
                Some(cols) => format!("{cols:?}"),
                None => "nil".into(),
            };
            let params = format!(
                "event: {}, schema: {schema}, table: {table}, filters: {}, select: {select}",
                event.map_or("*", Op::as_str),
                parsed.to_log(),
            );
            return Err(filter::FilterError::Refused { params, message }.into());
        }
        // The database could not be reached: tried again later, as any such join.
        Err(Unbound::Unavailable(e)) => return Err(unavailable(e)),
    };
    let select = match select {
        Some(cols) => Some(check_select(&info, &selectable, role, cols)?),
        None => None,
    };
    Ok(Subscription {
        id,
        event,
        scope: TableScope::Table {
            schema: Arc::from(schema),
            table: Arc::from(table),
        },
        rebind: (!parsed.columns().is_empty()).then(|| Arc::new(Rebind::new(parsed, &info))),
        filter,
        select,
        table_oid: Some(info.oid),
    })
}

/// Why a filter could not be bound to a table.
pub(super) enum Unbound {
    Filter(filter::FilterError),
    /// Postgres refused a value as the column's type: its words.
    Refused(String),
    Unavailable(CatalogError),
}

/// Binds `parsed` to `info`'s columns as they are now. Values the hub does not read
/// itself are read by Postgres, as Supabase has it cast every value: `day=eq.2024-1-2`
/// works, and `id=eq.abc` gets Postgres's words.
pub(super) async fn bind_filter(
    catalog: &Catalog,
    parsed: &filter::Filter,
    info: &TableInfo,
) -> Result<filter::BoundFilter, Unbound> {
    let mut casts = filter::Casts::new();
    for (column, value) in parsed.unreadable(&info.columns) {
        match catalog.read_value(info.oid, &column, &value).await {
            Ok(Ok(Some(read))) => {
                casts.insert((column, value), read);
            }
            Ok(Ok(None)) => {}
            Ok(Err(message)) => return Err(Unbound::Refused(message)),
            // Refused for another reason (a type in a schema the hub may not use): the
            // hub's own words below.
            Err(CatalogError::Postgres(e)) if e.as_db_error().is_some() => {
                tracing::debug!(error = %e, "filter value left unread by Postgres")
            }
            Err(e) => return Err(Unbound::Unavailable(e)),
        }
    }
    let mut filter = parsed
        .bind_cast(&info.columns, &casts)
        .map_err(Unbound::Filter)?;
    let orders = catalog.enum_orders();
    filter.share_enum_orders(|column, order| orders.share(&info.schema, &info.name, column, order));
    Ok(filter)
}

/// Whether a NUL character is in any string or member name of `v` (Postgres `jsonb`
/// cannot hold one).
fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_is_a_list_of_names_and_an_empty_list_means_every_column() {
        use serde_json::json;
        assert_eq!(
            parse_select(&json!({"select": ["b", "a", 3, "a"]})).unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(parse_select(&json!({"select": []})).unwrap(), None);
        assert_eq!(parse_select(&json!({})).unwrap(), None);
        assert_eq!(
            parse_select(&json!({"select": "a,b"})),
            Err(ChangesError::SelectNotList)
        );
    }

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(quote_ident("deals"), "deals");
        assert_eq!(quote_ident("Deals"), "\"Deals\"");
        assert_eq!(quote_ident("we\"ird; x"), "\"we\"\"ird; x\"");
        assert_eq!(qualified("public", "deals"), "public.deals");
    }
}
