//! One connection's joined channels: the join / leave / token-refresh state machine,
//! broadcast and presence pushes, limits, and the replies each of them gets. Socket-free:
//! it reads decoded `Inbound` messages and writes frames into the connection's outbox.

mod join;
mod postgres;
mod session;

pub use join::{truthy, JoinConfig};
pub use session::Session;

use std::sync::Arc;

use crate::auth::Verifier;
use crate::catalog::Catalog;
use crate::config::Limits;
use crate::router::Router;
use crate::telemetry::Metrics;

/// What every session needs from the hub; built once in `lib.rs`.
pub struct Services {
    pub router: Arc<Router>,
    pub verifier: Verifier,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// `None` when the hub runs without a database.
    pub catalog: Option<Catalog>,
}

/// `realtime:<name>` -> `<name>`.
pub fn channel_name(topic: &str) -> &str {
    topic.strip_prefix("realtime:").unwrap_or(topic)
}
