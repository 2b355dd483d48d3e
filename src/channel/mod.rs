//! One connection's session: its joined channels and what each client message does to
//! them (join, leave, token refresh and expiry, broadcast, presence, limits), and the
//! reply each gets. A state machine over decoded `Inbound` messages that writes frames
//! into the connection's outbox; it never touches the socket, so tests drive it directly.

mod join;
mod join_config;
mod messages;
mod private;
mod resume;
mod retry;
mod session;
#[cfg(test)]
mod tests;

pub use join_config::{truthy, JoinConfig};
pub use session::{answer_heartbeat, is_heartbeat, ConnResume, Session};

use std::sync::Arc;

use crate::auth::Verifier;
use crate::authz::Authz;
use crate::capture::CaptureStatus;
use crate::changes::Changes;
use crate::config::Limits;
use crate::resume::ResumeHandle;
use crate::router::Router;
use crate::telemetry::Metrics;

/// What every session needs from the hub; built once in `lib.rs`.
pub struct Services {
    pub router: Arc<Router>,
    pub changes: Changes,
    /// Private-channel decisions and Broadcast Replay.
    pub authz: Authz,
    /// `None` without a database: what `postgres_changes_options.wait` waits for.
    pub capture: Option<Arc<CaptureStatus>>,
    pub verifier: Verifier,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// `None` without a database: `resume=` keys are then ignored.
    pub resume: Option<ResumeHandle>,
}

impl Services {
    /// A hub's services without a database, verifying tokens with `config`'s secret.
    #[cfg(test)]
    pub(crate) fn for_tests(config: &crate::config::Config) -> Arc<Services> {
        let metrics = Arc::new(Metrics::new());
        Arc::new(Services {
            router: Arc::new(Router::new(metrics.clone()).with_presence_limits(
                crate::router::PresenceLimits {
                    max_presences: config.limits.max_presences_per_topic,
                    max_bytes: config.limits.max_presence_bytes_per_topic,
                },
            )),
            changes: Changes::new(None),
            authz: Authz::new(None),
            capture: None,
            verifier: Verifier::new(config.jwt_secret.as_deref(), None).expect("test secret"),
            limits: config.limits.clone(),
            metrics,
            resume: None,
        })
    }
}

/// `realtime:<name>` -> `<name>`.
pub fn channel_name(topic: &str) -> &str {
    topic.strip_prefix("realtime:").unwrap_or(topic)
}
