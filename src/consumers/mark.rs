//! Where a durable reader is in the log: a capture `Position`, plus, when a batch ended
//! inside one log row (one statement's rows share a log row), how many of that row's
//! changes were already handed over. Stored as text for webhooks (`position` column) and
//! handed to feed clients as an opaque cursor (`FeedCursor`). Pure.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::capture::{Cursor, Position};

/// A reader's place: everything `position` covers was handed over, and of each log row
/// `(id, seq)` in `partial` (rows `position` does not cover) the changes up to `seq`.
/// `partial` is sorted by id and nearly always has at most one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub position: Position,
    pub partial: Vec<(i64, u32)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad reader position {0:?}")]
pub struct MarkError(pub String);

impl Mark {
    pub fn at(cursor: Cursor) -> Mark {
        Mark {
            position: Position::at(cursor),
            partial: Vec::new(),
        }
    }

    /// Whether change `seq` of log row `id` was handed over already (as part of the
    /// partly delivered row).
    pub fn covers(&self, id: i64, seq: u32) -> bool {
        self.partial.iter().any(|&(pid, ps)| pid == id && seq <= ps)
    }

    /// Parses the `Display` form: a `Position`, then `+id.seq` per partly read row.
    pub fn parse(text: &str) -> Result<Mark, MarkError> {
        let bad = || MarkError(text.to_string());
        let mut parts = text.split('+');
        let position = Position::parse(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let mut partial = parts
            .map(|p| {
                let (id, seq) = p.split_once('.')?;
                Some((id.parse().ok()?, seq.parse().ok()?))
            })
            .collect::<Option<Vec<(i64, u32)>>>()
            .ok_or_else(bad)?;
        partial.sort_unstable();
        Ok(Mark { position, partial })
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.position)?;
        for (id, seq) in &self.partial {
            write!(f, "+{id}.{seq}")?;
        }
        Ok(())
    }
}

/// The change feed's cursor: a `Mark`, opaque to clients (base64url with a version tag),
/// never an id or a timestamp.
pub struct FeedCursor;

const FEED_CURSOR_TAG: &str = "c1.";
/// A cursor that also names the tables it was handed out for (`encode_named`).
const NAMED_CURSOR_TAG: &str = "c2.";

/// A table a feed cursor was handed out for: its oid and its (schema, name) then. A cursor
/// passed back after the table was renamed still finds the rows logged under the old name.
pub type NamedTable = (u32, String, String);

impl FeedCursor {
    pub fn encode(mark: &Mark) -> String {
        format!(
            "{FEED_CURSOR_TAG}{}",
            URL_SAFE_NO_PAD.encode(mark.to_string())
        )
    }

    /// `encode`, naming `tables` too.
    pub fn encode_named(mark: &Mark, tables: &[NamedTable]) -> String {
        let body = serde_json::json!([mark.to_string(), tables]).to_string();
        format!("{NAMED_CURSOR_TAG}{}", URL_SAFE_NO_PAD.encode(body))
    }

    pub fn decode(text: &str) -> Result<Mark, MarkError> {
        FeedCursor::decode_named(text).map(|(mark, _)| mark)
    }

    /// A cursor of either form, with the tables it names (none for the first form).
    pub fn decode_named(text: &str) -> Result<(Mark, Vec<NamedTable>), MarkError> {
        let bad = || MarkError(text.to_string());
        let text = text.trim();
        let (named, body) = match text.strip_prefix(NAMED_CURSOR_TAG) {
            Some(body) => (true, body),
            None => (false, text.strip_prefix(FEED_CURSOR_TAG).ok_or_else(bad)?),
        };
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let body = String::from_utf8(bytes).map_err(|_| bad())?;
        if !named {
            return Ok((Mark::parse(&body).map_err(|_| bad())?, Vec::new()));
        }
        let (mark, tables): (String, Vec<NamedTable>) =
            serde_json::from_str(&body).map_err(|_| bad())?;
        Ok((Mark::parse(&mark).map_err(|_| bad())?, tables))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(text: &str) -> Mark {
        Mark::parse(text).unwrap()
    }

    #[test]
    fn a_mark_round_trips_through_text_with_and_without_a_partial_row() {
        for text in [
            "105:100,102",
            "105:100,102/110:@42",
            "105:/110:@42+57.3",
            "7:+9.0",
            "7:+9.0+12.5",
            "105:/110:@42/~1764629601123456.1764629700000001+57.3",
        ] {
            assert_eq!(mark(text).to_string(), text);
        }
        let m = mark("105:/110:@42+57.3");
        assert_eq!(m.partial, vec![(57, 3)]);
        assert!(m.covers(57, 3) && m.covers(57, 0));
        assert!(!m.covers(57, 4) && !m.covers(58, 0));
        for bad in [
            "",
            "x",
            "7:+",
            "7:+9",
            "7:+9.x",
            "7:+x.1",
            "7:/8:+1.1",
            "7:+1.2+3",
        ] {
            assert!(Mark::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_feed_cursor_is_opaque_and_round_trips() {
        let m = mark("2779:2770,2775/2790:@311/~1764629601123456.1764629700000001+312.4");
        let c = FeedCursor::encode(&m);
        assert!(c.starts_with("c1."), "{c}");
        assert!(
            !c.contains(':') && !c.contains('/') && !c.contains('+'),
            "{c}"
        );
        assert_eq!(FeedCursor::decode(&c).unwrap(), m);
        for bad in [
            "",
            "c1.",
            "c1.!!",
            "2779:",
            "c2.Mjc3OTo",
            "c1.eHl6",
            "c3.eHl6",
        ] {
            assert!(FeedCursor::decode(bad).is_err(), "{bad:?}");
        }
        let tables = vec![(16384, "public".to_owned(), "a \"b\", c".to_owned())];
        let named = FeedCursor::encode_named(&m, &tables);
        assert!(named.starts_with("c2."), "{named}");
        assert_eq!(
            FeedCursor::decode_named(&named).unwrap(),
            (m.clone(), tables)
        );
        assert_eq!(FeedCursor::decode_named(&c).unwrap(), (m, Vec::new()));
    }
}
