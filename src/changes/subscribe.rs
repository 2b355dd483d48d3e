//! Turning a join's `postgres_changes` entries into validated subscriptions: the reply
//! entries (echoed verbatim plus an integer `id`), and a clear error for each entry that
//! cannot be served (missing table, table not enabled, bad filter, unknown column).

use std::sync::Arc;

use serde_json::Value;

use super::catalog::Catalog;
use super::filter;
use super::index::{subscription_id, Subscription, TableScope};
use super::row::Op;
use super::stats::ChangeStats;
use crate::protocol::ChangesError;

/// The outcome of validating a join's entries.
pub struct Validated {
    /// The reply's `postgres_changes` array.
    pub reply: Vec<Value>,
    pub subscriptions: Vec<Subscription>,
    /// One error per entry that could not be subscribed.
    pub errors: Vec<ChangesError>,
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

/// Validates each entry against the catalog. Without a catalog (no database configured)
/// every entry is echoed and reported as unavailable. Entries refused because their
/// table is not enabled are counted in `stats`.
pub async fn validate(
    catalog: Option<&Catalog>,
    entries: &[Value],
    stats: &ChangeStats,
) -> Validated {
    let mut out = Validated {
        reply: Vec::with_capacity(entries.len()),
        subscriptions: Vec::new(),
        errors: Vec::new(),
    };
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
        match subscription(catalog, entry, id, stats).await {
            Ok(sub) => out.subscriptions.push(sub),
            Err(e) => out.errors.push(e),
        }
    }
    out
}

async fn subscription(
    catalog: &Catalog,
    entry: &Value,
    id: u32,
    stats: &ChangeStats,
) -> Result<Subscription, ChangesError> {
    if !entry.is_object() {
        return Err(ChangesError::EntryNotObject);
    }
    let event = str_field(entry, "event")
        .unwrap_or("*")
        .to_ascii_uppercase();
    let event = Op::parse(&event);
    let schema = str_field(entry, "schema").unwrap_or("public");
    let table = str_field(entry, "table").unwrap_or("*");
    let filter_text = str_field(entry, "filter").unwrap_or("");
    let parsed = filter::parse(filter_text)?;
    if schema == "*" || table == "*" {
        if !parsed.columns().is_empty() {
            return Err(ChangesError::FilterNeedsTable {
                scope: format!("{schema}.{table}"),
            });
        }
        let scope = if schema == "*" {
            TableScope::All
        } else {
            TableScope::Schema(schema.into())
        };
        return Ok(Subscription {
            id,
            event,
            scope,
            filter: parsed.bind(&[])?,
        });
    }
    let name = qualified(schema, table);
    let info = catalog
        .table(schema, table)
        .await
        .map_err(|e| ChangesError::Unavailable(e.to_string()))?
        .ok_or_else(|| ChangesError::NoSuchTable {
            table: name.clone(),
        })?;
    if !info.realtime_enabled {
        stats.refused(schema, table, chrono::Utc::now());
        return Err(ChangesError::NotEnabled { table: name });
    }
    Ok(Subscription {
        id,
        event,
        scope: TableScope::Table {
            schema: Arc::from(schema),
            table: Arc::from(table),
        },
        filter: parsed.bind(&info.columns)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(quote_ident("deals"), "deals");
        assert_eq!(quote_ident("Deals"), "\"Deals\"");
        assert_eq!(quote_ident("we\"ird; x"), "\"we\"\"ird; x\"");
        assert_eq!(qualified("public", "deals"), "public.deals");
    }
}
