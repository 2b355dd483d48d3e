//! The row-scope tests of `pg_changes_row_scope.rs` again, with the hub connected as a non-superuser
//! login role: `tests/common/pg.rs` reads this target's name (`*_as_authenticator`); see
//! the README, "Running as a non-superuser".

#[path = "pg_changes_row_scope.rs"]
mod scenarios;
