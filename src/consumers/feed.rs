//! The change feed for sync jobs: `GET /realtime/v1/api/changes?tables=..&cursor=..`
//! answers the changes of those tables after the cursor that the token's viewer may see
//! (row scope as for a WebSocket subscriber with the same claims; service_role sees
//! everything), and `next_cursor`. No cursor starts at "now". When nothing is new it
//! waits (long-polls) up to `wait` seconds, woken by the capture's progress.
//!
//! The cursor is an opaque log position (`FeedCursor`): a consumer that always passes
//! back the last `next_cursor` gets every committed change exactly once, across hub and
//! Postgres restarts. A cursor the log was pruned past is refused (410), never skipped.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deliver::event_id;
use super::log;
use super::mark::{FeedCursor, Mark, NamedTable};
use super::select::Selection;
use super::{ConsumersError, ConsumersHandle};
use crate::auth::Claims;
use crate::capture::current_position;
use crate::changes::{capturable, quote_ident, CatalogError, Change, Rename, Scope, Viewer};
use crate::protocol::{refuse_nul, FeedError};

/// How often a waiting request reads the log while the capture says nothing of its
/// tables: hundreds of idle long-polls then cost the database a few reads a second, not
/// one per request per `capture_poll_ms`.
const FALLBACK_READ: Duration = Duration::from_secs(5);

/// `limit` when the request names none (capped by `feed_max_limit`).
const DEFAULT_LIMIT: usize = 500;

const LOST_SINCE: &str = "select realtime.log_lost_since($1::text::xid8, $2::text[]::xid8[])";

/// A catalog lookup that failed: unavailable, unless Postgres refused the text asked about.
fn catalog_error(e: CatalogError) -> FeedError {
    match e.bad_text() {
        Some(message) => FeedError::BadName(message),
        None => FeedError::Unavailable,
    }
}

/// The query string, as sent.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FeedQuery {
    pub tables: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
    pub wait: Option<String>,
}

/// The answer: changes in log order (each the postgres_changes `data` object plus its
/// event `id`), and the cursor to pass next time.
#[derive(Debug, Serialize)]
pub struct FeedPage {
    pub changes: Vec<Box<RawValue>>,
    pub next_cursor: String,
}

/// A parsed request.
struct Request {
    selection: Selection,
    /// The tables asked for, as named now: the next cursor names them.
    tables: Vec<NamedTable>,
    /// (name the cursor knew a table by, its name now) for each table renamed since.
    renames: Vec<Rename>,
    start: Option<Mark>,
    limit: usize,
    wait: Duration,
}

impl ConsumersHandle {
    /// Answers one feed request for `claims`; gives up waiting when `shutdown` fires.
    pub async fn feed(
        &self,
        claims: &Claims,
        query: &FeedQuery,
        shutdown: &CancellationToken,
    ) -> Result<FeedPage, FeedError> {
        let everything = &*claims.role == "service_role";
        let req = self
            .parse(query, (!everything).then_some(&*claims.role))
            .await?;
        let scope = if everything {
            Scope::Everything
        } else {
            Scope::Viewer(std::sync::Arc::new(Viewer::from_claims(claims)))
        };
        self.answer(req, &scope, shutdown)
            .await
            .map_err(|e| match e {
                Answer::Feed(e) => e,
                Answer::Internal(e) => {
                    tracing::warn!(error = %e, "change feed request failed");
                    FeedError::Unavailable
                }
            })
    }

    /// `role`: the role a viewer's rows are scoped by (`None`: service_role, everything).
    async fn parse(&self, q: &FeedQuery, role: Option<&str>) -> Result<Request, FeedError> {
        let settings = &self.inner.settings;
        let max_limit = settings.feed_max_limit;
        let limit = match q.limit.as_deref() {
            None => DEFAULT_LIMIT.min(max_limit),
            Some(l) => l
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max_limit).contains(n))
                .ok_or(FeedError::BadLimit { max: max_limit })?,
        };
        let max_wait = settings.feed_max_wait.as_secs();
        let wait = match q.wait.as_deref() {
            None => 0,
            Some(w) => w
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= max_wait)
                .ok_or(FeedError::BadWait { max: max_wait })?,
        };
        let (start, named) = match q.cursor.as_deref().filter(|c| !c.trim().is_empty()) {
            None => (None, Vec::new()),
            Some(c) => {
                let (mark, named) =
                    FeedCursor::decode_named(c).map_err(|_| FeedError::BadCursor)?;
                (Some(mark), named)
            }
        };
        let tables = self.tables(q.tables.as_deref().unwrap_or(""), role).await?;
        let names: Vec<(String, String)> = tables
            .iter()
            .map(|(_, s, t)| (s.clone(), t.clone()))
            .collect();
        let mut selection = Selection::tables(&names);
        // A table renamed since the cursor was handed out: its rows logged before the
        // rename carry the name the cursor knew it by.
        let mut renames = Vec::new();
        for (oid, schema, table) in &tables {
            if let Some((_, s0, t0)) = named.iter().find(|(o, ..)| o == oid) {
                if (s0, t0) != (schema, table) {
                    let rename = ((s0.clone(), t0.clone()), (schema.clone(), table.clone()));
                    selection.alias(&rename.0, &rename.1);
                    renames.push(rename);
                }
            }
        }
        Ok(Request {
            selection,
            tables,
            renames,
            start,
            limit,
            wait: Duration::from_secs(wait),
        })
    }

    /// The `tables` parameter: existing tables with realtime enabled, with their oids. A
    /// `role` that may select none of a table's columns is answered as for a table that
    /// does not exist, as a join answers it, so a token cannot learn which tables exist.
    async fn tables(&self, text: &str, role: Option<&str>) -> Result<Vec<NamedTable>, FeedError> {
        let catalog = self.inner.changes.catalog().ok_or(FeedError::NoDatabase)?;
        let mut out = Vec::new();
        for part in split_tables(text).into_iter().map(str::trim) {
            if part.is_empty() {
                return Err(FeedError::BadTables(text.to_owned()));
            }
            refuse_nul("table", part).map_err(FeedError::BadName)?;
            let (schema, table) = crate::db::parse_qualified(part)
                .map_err(|_| FeedError::BadTables(text.to_owned()))?;
            let name = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
            let info = catalog
                .table(&schema, &table)
                .await
                .map_err(catalog_error)?;
            let info = match role {
                None => info,
                Some(role) => catalog
                    .visible_to(info, role)
                    .await
                    .map_err(catalog_error)?
                    .map(|(info, _)| info),
            };
            let Some(info) = info else {
                // A view (or the like) the reader may select from is told what it is, as
                // a join is; anything else gets the answer a missing table gets.
                let other = catalog.other_relation(&schema, &table, role);
                if let Some(kind) = other.await.map_err(catalog_error)? {
                    return Err(FeedError::NotATable { table: name, kind });
                }
                return Err(match role {
                    None => FeedError::NoSuchTable(name),
                    Some(role) => FeedError::NoVisibleTable {
                        table: name,
                        role: role.to_owned(),
                    },
                });
            };
            if !info.realtime_enabled {
                return Err(match capturable(&schema) {
                    true => FeedError::NotEnabled { table: name },
                    false => FeedError::NotCapturable {
                        table: name,
                        schema: schema.clone(),
                    },
                });
            }
            out.push((info.oid, schema, table));
        }
        Ok(out)
    }

    async fn answer(
        &self,
        req: Request,
        scope: &Scope,
        shutdown: &CancellationToken,
    ) -> Result<FeedPage, Answer> {
        let inner = &self.inner;
        let mut progress = inner.progress.clone();
        progress.borrow_and_update();
        let mut mark = match req.start {
            Some(m) => m,
            None => {
                let client = inner.pool.get().await.map_err(ConsumersError::from)?;
                Mark {
                    position: current_position(&client)
                        .await
                        .map_err(ConsumersError::from)?,
                    partial: Vec::new(),
                }
            }
        };
        let deadline = Instant::now() + req.wait;
        let ticks = || inner.ticks.of(req.selection.table_names());
        loop {
            progress.borrow_and_update();
            let seen = ticks();
            let read = log::read(&inner.pool, &mark, req.limit, &req.selection).await?;
            // Rows new to `mark` deleted before this read would be missing from it.
            self.check_not_pruned(&mark).await?;
            let (changes, marks): (Vec<Change>, Vec<Mark>) = read.items.into_iter().unzip();
            let rendered = inner
                .changes
                .render(&inner.rls, scope, &changes, &req.renames)
                .await
                .map_err(ConsumersError::from)?;
            let mut out = Vec::new();
            let mut next = read.tail;
            for ((change, after), data) in changes.iter().zip(marks).zip(rendered) {
                let Some(data) = data else { continue };
                out.push(with_id(&event_id(change), &data));
                if out.len() >= req.limit {
                    next = after;
                    break;
                }
            }
            mark = next;
            if !out.is_empty() {
                return Ok(page(out, &mark, &req.tables));
            }
            if read.full {
                continue;
            }
            let now = Instant::now();
            if now >= deadline || shutdown.is_cancelled() {
                return Ok(page(out, &mark, &req.tables));
            }
            // Read again when the capture has read rows of these tables, or, in case it is
            // down, after `FALLBACK_READ` whatever it says.
            let wake_at = deadline.min(now + inner.poll.max(FALLBACK_READ));
            let _waiting = Waiting::new(&inner.feed_waiting);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = progress.changed() => if r.is_err() {
                        tokio::time::sleep_until(wake_at).await;
                        break;
                    } else if ticks() != seen {
                        break;
                    },
                    _ = tokio::time::sleep_until(wake_at) => break,
                }
            }
        }
    }

    async fn check_not_pruned(&self, mark: &Mark) -> Result<(), Answer> {
        let (xmax, xip) = mark.position.cursor.bind_texts();
        let client = self.inner.pool.get().await.map_err(ConsumersError::from)?;
        let lost: bool = client
            .query_one(LOST_SINCE, &[&xmax, &xip])
            .await
            .map_err(ConsumersError::from)?
            .get(0);
        if lost {
            return Err(Answer::Feed(FeedError::CursorGone));
        }
        Ok(())
    }
}

/// `tables` split at its commas, except those inside a quoted name (`public."a,b"`).
fn split_tables(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            // `""` inside a quoted name toggles twice.
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Why an answer is not changes.
enum Answer {
    Feed(FeedError),
    Internal(ConsumersError),
}

impl From<ConsumersError> for Answer {
    fn from(e: ConsumersError) -> Self {
        Answer::Internal(e)
    }
}

fn page(changes: Vec<Box<RawValue>>, mark: &Mark, tables: &[NamedTable]) -> FeedPage {
    FeedPage {
        changes,
        next_cursor: FeedCursor::encode_named(mark, tables),
    }
}

/// `data` (a JSON object) with `"id"` first.
fn with_id(id: &str, data: &RawValue) -> Box<RawValue> {
    let text = data.get();
    let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
    let joined = match text.strip_prefix('{').map(str::trim_start) {
        Some(rest) if rest.starts_with('}') => format!("{{\"id\":{id}}}"),
        Some(rest) => format!("{{\"id\":{id},{rest}"),
        None => format!("{{\"id\":{id},\"data\":{text}}}"),
    };
    RawValue::from_string(joined).unwrap_or_else(|_| data.to_owned())
}

/// Counts a feed request in `feed_waiting` while it waits (`switchboard_feed_waiting`).
struct Waiting<'a>(&'a AtomicI64);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicI64) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_split_at_commas_outside_quoted_names() {
        assert_eq!(split_tables("public.a,b"), ["public.a", "b"]);
        assert_eq!(
            split_tables(r#"public."a,b", x."c""d,e""#),
            [r#"public."a,b""#, r#" x."c""d,e""#]
        );
        assert_eq!(split_tables(""), [""]);
        assert_eq!(split_tables("a,"), ["a", ""]);
    }

    #[test]
    fn a_feed_change_is_its_data_with_the_event_id_first() {
        let data = RawValue::from_string(r#"{"schema":"public","type":"INSERT"}"#.into()).unwrap();
        assert_eq!(
            with_id("7-0", &data).get(),
            r#"{"id":"7-0","schema":"public","type":"INSERT"}"#
        );
        let empty = RawValue::from_string("{}".into()).unwrap();
        assert_eq!(with_id("7-1", &empty).get(), r#"{"id":"7-1"}"#);
    }
}
