//! The private-channel tests of `private_channels.rs` again, with the hub connected as a non-superuser
//! login role: `tests/common/pg.rs` reads this target's name (`*_as_authenticator`); see
//! the README, "Running as a non-superuser".

#[path = "private_channels.rs"]
mod scenarios;
