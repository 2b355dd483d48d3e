//! The resume tests of `resume_protocol.rs` again, with the hub connected as a non-superuser
//! login role: `tests/common/pg.rs` reads this target's name (`*_as_authenticator`); see
//! the README, "Running as a non-superuser".

#[path = "resume_protocol.rs"]
mod scenarios;
