//! The resume tests of `resume_protocol.rs` again, with hubs that keep no delivered
//! batches in memory (`resume_memory_secs = 0`, set by `common::hub::test_config` for
//! targets named `*_from_log`): every resumed gap, even on the hub that delivered it, is
//! read from the log.

#[path = "resume_protocol.rs"]
mod scenarios;
