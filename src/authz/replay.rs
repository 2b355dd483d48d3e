//! Broadcast Replay (`config.broadcast.replay: {since, limit}` on a private channel): the
//! stored broadcasts of a topic since `since` (ms since the epoch), newest `limit` of
//! them (1..=25, default 10) sent oldest first, as Supabase does; plus how many were
//! stored in all, so the channel can say how many the limit left out.
//!
//! The seam with live delivery: the query also returns the snapshot it read under. The
//! channel holds live frames back while it replays; afterwards a held database broadcast
//! whose transaction that snapshot already saw is dropped (it was replayed, or left out as
//! older than the replayed ones), every other one is delivered. Nothing is sent twice and
//! nothing committed after the snapshot is lost.

use bytes::Bytes;
use deadpool_postgres::Pool;
use serde_json::Value;

use super::AuthzError;
use crate::capture::Cursor;

/// Supabase's hard limit on replayed messages.
pub const MAX_REPLAY: i64 = 25;
/// Replayed messages when the join names no `limit`: the default of Supabase's replay
/// payload schema (PROTOCOL.md §3; its channel code falls back to 25).
pub const DEFAULT_REPLAY: i64 = 10;

/// One statement, one snapshot (`realtime.replay_messages`, which reads with the
/// migrating role's rights): the snapshot, how many messages match, and the newest `$3` of
/// them (`$1` topic, `$2` since in ms). The snapshot row comes back even when nothing
/// matches.
const REPLAY: &str = "select snapshot, stored, id, event, payload, binary_payload \
     from realtime.replay_messages($1::text, $2::int8, $3::int8)";

/// `config.broadcast.replay`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRequest {
    /// Milliseconds since the Unix epoch.
    pub since_ms: i64,
    /// 1..=25.
    pub limit: i64,
}

/// What a join's `replay` value asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// No `replay` key, or (as Supabase ignores it) a value that is not an object.
    None,
    Requested(ReplayRequest),
    /// `since` missing, out of range or not an integer, or `limit` not an integer.
    Invalid,
}

impl Replay {
    /// Reads `config.broadcast.replay` (`None` when absent).
    pub fn parse(value: Option<&Value>) -> Replay {
        let Some(Value::Object(map)) = value else {
            return Replay::None;
        };
        let since = map.get("since").and_then(Value::as_i64);
        let limit = match map.get("limit") {
            None | Some(Value::Null) => Some(DEFAULT_REPLAY),
            Some(v) => v.as_i64(),
        };
        match (since, limit) {
            (Some(since_ms), Some(limit))
                if chrono::DateTime::from_timestamp_millis(since_ms).is_some() =>
            {
                Replay::Requested(ReplayRequest {
                    since_ms,
                    limit: limit.clamp(1, MAX_REPLAY),
                })
            }
            _ => Replay::Invalid,
        }
    }
}

/// One stored broadcast.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: String,
    pub event: String,
    pub payload: Value,
    pub binary: Option<Bytes>,
}

/// The replayed messages (oldest first) and where the seam lies.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub messages: Vec<StoredMessage>,
    /// How many stored messages matched (more than `messages.len()` when the limit cut).
    pub stored: u64,
    pub seam: Seam,
}

/// The snapshot a replay read under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seam(Cursor);

impl Seam {
    /// Whether the transaction `xid` had finished when the replay read: a message it
    /// wrote was replayed (or left out as older than the replayed ones), so the live path
    /// must not deliver it to this channel, however late capture reads it.
    pub fn covers(&self, xid: u64) -> bool {
        self.0.sees(xid)
    }
}

pub(super) async fn load(
    pool: &Pool,
    topic: &str,
    request: ReplayRequest,
) -> Result<Replayed, AuthzError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(REPLAY).await?;
    let rows = client
        .query(&stmt, &[&topic, &request.since_ms, &request.limit])
        .await?;
    let snapshot: String = rows
        .first()
        .map(|r| r.get(0))
        .ok_or_else(|| AuthzError::Unavailable("replay returned no snapshot".into()))?;
    let stored: i64 = rows.first().map(|r| r.get(1)).unwrap_or(0);
    let seam = Cursor::from_pg_snapshot(&snapshot)
        .map(Seam)
        .map_err(|e| AuthzError::Unavailable(e.to_string()))?;
    let mut messages: Vec<StoredMessage> = rows
        .iter()
        .filter_map(|r| {
            let id: Option<String> = r.get("id");
            let payload = crate::capture::json_column(r, "payload").ok()?;
            Some(StoredMessage {
                id: id?,
                event: r.get("event"),
                payload: payload.unwrap_or(Value::Null),
                binary: r
                    .get::<_, Option<Vec<u8>>>("binary_payload")
                    .map(Bytes::from),
            })
        })
        .collect();
    messages.reverse();
    Ok(Replayed {
        messages,
        stored: u64::try_from(stored).unwrap_or(0),
        seam,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replay_params_follow_supabase() {
        let req = |v: Value| Replay::parse(Some(&v));
        assert_eq!(
            req(json!({"since": 1000, "limit": 5})),
            Replay::Requested(ReplayRequest {
                since_ms: 1000,
                limit: 5
            })
        );
        assert_eq!(
            req(json!({"since": 1000})),
            Replay::Requested(ReplayRequest {
                since_ms: 1000,
                limit: 10
            })
        );
        assert_eq!(
            req(json!({"since": 1000, "limit": 500})),
            Replay::Requested(ReplayRequest {
                since_ms: 1000,
                limit: 25
            })
        );
        assert_eq!(
            req(json!({"since": 1000, "limit": 0})),
            Replay::Requested(ReplayRequest {
                since_ms: 1000,
                limit: 1
            })
        );
        assert_eq!(req(json!({"limit": 5})), Replay::Invalid);
        assert_eq!(req(json!({"since": "yesterday"})), Replay::Invalid);
        assert_eq!(req(json!({"since": 1000, "limit": "ten"})), Replay::Invalid);
        assert_eq!(req(json!({"since": i64::MAX})), Replay::Invalid);
        assert_eq!(req(json!(true)), Replay::None);
        assert_eq!(Replay::parse(None), Replay::None);
    }

    #[test]
    fn a_replay_covers_transactions_finished_before_its_snapshot() {
        let r = Seam(Cursor::from_pg_snapshot("101:105:101,103").unwrap());
        assert!(r.covers(99) && r.covers(100) && r.covers(102) && r.covers(104));
        assert!(!r.covers(101) && !r.covers(103) && !r.covers(105) && !r.covers(200));
    }
}
