//! Capture by logical decoding, in parts: a slot's `pgoutput` changes taken apart
//! (`pgoutput`) and written into `realtime.changes` with the JSON the capture triggers
//! write (`logrows`), together with how far the slot was read; a reader that streams
//! the slot and writes it so, connecting again after failures (`reader`).
//!
//! Not yet wired into the hub: capture is still by trigger. These parts are what the
//! decoded capture of issue 14 will stand on (BENCHMARKS.md, "capture without a
//! trigger"), tested against the trigger's own output (`tests/capture_decoded.rs`), and
//! `switchboard-bench writeload --decoded --decoder crate --reader-log` runs them on a
//! replication stream to measure what writing the log costs.

mod logrows;
mod pgoutput;
mod reader;

pub use logrows::{written_position, LogRows, Written, CHUNK_ROWS};
pub use pgoutput::{parse, Datum, Message, Relation, Tuple};
pub use reader::{replication_config, run, ReaderConfig, ReaderStats, APPLICATION_NAME};

/// A `pgoutput` message that cannot be taken apart, or a change that cannot be logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("logical decoding: {0}")]
pub struct DecodeError(pub String);
