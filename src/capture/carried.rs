//! What a wake-up carries. While a hub waits for wake-ups, the capture triggers put the
//! log row they just wrote into the NOTIFY payload when it fits
//! (`sql/052_wake_payload.sql`); any other wake-up is empty. The capture loop delivers a
//! carried row at once, before the read that would otherwise fetch it, when nothing
//! committed earlier can still be unread (see `Session::deliver_carried`), and records it
//! in the position as read ahead, so the read skips it.

use super::reader::{Logged, RawRows};
use crate::changes::{LogEntry, Op};
use chrono::DateTime;
use serde::Deserialize;

/// One log row from a wake-up's payload.
#[derive(Debug)]
pub(super) struct Carried {
    /// The writing transaction (`xid8`).
    pub xid: u64,
    /// The log row's id.
    pub id: i64,
    /// Its `created_at`, in µs since the epoch.
    pub created_at: i64,
    /// `realtime.rules_version()` in the writing transaction.
    pub rules_version: Option<i64>,
    pub entry: LogEntry,
}

/// The payload's fields, as the triggers write them.
#[derive(Deserialize)]
struct Payload {
    id: i64,
    xid: String,
    /// `created_at`, in microseconds since the Unix epoch.
    at: i64,
    rv: Option<i64>,
    s: String,
    t: String,
    op: String,
    rows: Option<RawRows>,
    old_rows: Option<RawRows>,
}

/// Parses a wake-up's payload; `None` for an empty wake-up or anything not a carried log
/// row (which then only wakes the reader).
pub(super) fn carried(payload: &str) -> Option<Carried> {
    if payload.is_empty() {
        return None;
    }
    let p: Payload = serde_json::from_str(payload)
        .inspect_err(|e| tracing::debug!(error = %e, "wake-up payload not understood"))
        .ok()?;
    let op = Op::parse(&p.op)?;
    let xid = p.xid.parse().ok()?;
    let entry = Logged {
        id: p.id,
        xid,
        op,
        schema: p.s,
        table: p.t,
        commit_time: DateTime::from_timestamp_micros(p.at)?,
        record: None,
        old_record: None,
        rows: p.rows,
        old_rows: p.old_rows,
    }
    .into_entry();
    Some(Carried {
        xid,
        id: p.id,
        created_at: p.at,
        rules_version: p.rv,
        entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_becomes_the_changes_a_read_of_its_log_row_would_give() {
        let c = carried(
            r#"{"id":41,"xid":"7301","at":1764720000123456,"rv":3,"s":"public","t":"jobs",
                "op":"UPDATE","rows":[{"id":1,"v":"b"},{"id":2,"v":"c"}],
                "old_rows":[{"id":1,"v":"a"},{"id":2,"v":"b"}]}"#,
        )
        .unwrap();
        assert_eq!((c.xid, c.id, c.rules_version), (7301, 41, Some(3)));
        let events = crate::changes::into_events(vec![c.entry]);
        assert_eq!(events.len(), 2);
        let crate::changes::DbEvent::Change(second) = &events[1] else {
            panic!("a change")
        };
        assert_eq!((second.id, second.seq, second.op), (41, 1, Op::Update));
        assert_eq!(
            (second.schema.as_str(), second.table.as_str()),
            ("public", "jobs")
        );
        assert_eq!(second.record.as_ref().unwrap()["v"], "c");
        assert_eq!(second.old_record.as_ref().unwrap()["v"], "b");
        assert_eq!(second.commit_time.timestamp_micros(), 1764720000123456);
    }

    #[test]
    fn an_empty_or_foreign_payload_only_wakes() {
        for p in [
            "",
            "{}",
            "hello",
            r#"{"id":1,"xid":"x","at":0,"rv":null,"s":"public","t":"a","op":"INSERT","rows":[]}"#,
            r#"{"id":1,"xid":"5","at":0,"rv":null,"s":"public","t":"a","op":"TRUNCATE","rows":[]}"#,
        ] {
            assert!(carried(p).is_none(), "{p:?}");
        }
    }
}
