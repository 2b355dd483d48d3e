//! Turning a join's `postgres_changes` entries into validated subscriptions: the reply
//! entries (echoed verbatim plus an integer `id`), and a clear error for each entry that
//! cannot be served (missing table, table not enabled, bad filter, unknown column).

use std::sync::Arc;

use serde_json::Value;

use crate::catalog::Catalog;
use crate::router::change::Op;
use crate::router::filter;
use crate::router::postgres::{subscription_id, PgSubscription, TableScope};

/// The outcome of validating a join's entries.
pub struct Validated {
    /// The reply's `postgres_changes` array.
    pub reply: Vec<Value>,
    pub subscriptions: Vec<PgSubscription>,
    /// One message per entry that could not be subscribed.
    pub errors: Vec<String>,
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
/// every entry is echoed and reported as unavailable.
pub async fn validate(catalog: Option<&Catalog>, entries: &[Value]) -> Validated {
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
            out.errors
                .push("postgres_changes is unavailable: the hub runs without a database (set DATABASE_URL)".into());
            continue;
        };
        match subscription(catalog, entry, id).await {
            Ok(sub) => out.subscriptions.push(sub),
            Err(message) => out.errors.push(message),
        }
    }
    out
}

async fn subscription(catalog: &Catalog, entry: &Value, id: u32) -> Result<PgSubscription, String> {
    if !entry.is_object() {
        return Err("Unable to subscribe to changes with given parameters: each postgres_changes entry must be an object".into());
    }
    let event = str_field(entry, "event")
        .unwrap_or("*")
        .to_ascii_uppercase();
    let event = Op::parse(&event);
    let schema = str_field(entry, "schema").unwrap_or("public");
    let table = str_field(entry, "table").unwrap_or("*");
    let filter_text = str_field(entry, "filter").unwrap_or("");
    let parsed = filter::parse(filter_text).map_err(|e| e.to_string())?;
    if schema == "*" || table == "*" {
        if !parsed.columns().is_empty() {
            return Err(format!(
                "Unable to subscribe to changes with given parameters: a filter needs a single table, not `{schema}.{table}`"
            ));
        }
        let scope = if schema == "*" {
            TableScope::All
        } else {
            TableScope::Schema(schema.into())
        };
        let filter = parsed.bind(&[]).map_err(|e| e.to_string())?;
        return Ok(PgSubscription {
            id,
            event,
            scope,
            filter,
        });
    }
    let name = qualified(schema, table);
    let info = catalog
        .table(schema, table)
        .await
        .map_err(|e| format!("Unable to subscribe to changes with given parameters: {e}"))?
        .ok_or_else(|| {
            format!(
                "Unable to subscribe to changes with given parameters: table {name} does not exist"
            )
        })?;
    if !info.realtime_enabled {
        return Err(format!(
            "table {name} is not enabled for realtime; enable it with: select realtime.enable('{}')",
            name.replace('\'', "''")
        ));
    }
    let filter = parsed.bind(&info.columns).map_err(|e| e.to_string())?;
    Ok(PgSubscription {
        id,
        event,
        scope: TableScope::Table {
            schema: Arc::from(schema),
            table: Arc::from(table),
        },
        filter,
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
