//! A join on a connection that opted in to resume: claim the channel's parked row before
//! registering, then (in the background, so the connection keeps answering) replay the
//! gap from where it left off to dispatch's cut, tell the client how it went, and open
//! the gate for live frames. See `resume` for positions and parked rows.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::join_config::JoinConfig;
use super::session::Session;
use crate::capture::Position;
use crate::changes::{Mark, ReplayTarget};
use crate::protocol::{self, NotRecovered, Resumed, SystemMessage};
use crate::resume::{ChannelAck, ChannelIdent, Found, LiveChannel, ResumeError, ResumeHandle};
use crate::router::outbox::Gate;

/// A parked row claimed for a joining channel.
pub(super) struct Claim {
    ident: ChannelIdent,
    owner: String,
    found: Result<Found, ResumeError>,
}

impl Claim {
    /// The parked row could not be read (the database is unreachable).
    pub(super) fn unreadable(&self) -> bool {
        self.found.is_err()
    }
}

/// How long the resuming joins of one reconnect wait, together, after their replies, for
/// this hub's reader to reach their positions (`Session::reach`). A connection's pushes
/// are handled in order, so while one join waits the next one's reply waits too: the
/// wait must end well inside a client's join timeout (realtime-js: 10 s), or the joins
/// after it time out and churn. A hub further behind registers the channels anyway, and
/// the changes in between arrive twice.
const REACH_WAIT: Duration = Duration::from_secs(5);

/// Joins that come within this of the last deadline share it (they were sent together,
/// and waited behind the first).
const REACH_SHARED: Duration = Duration::from_secs(2);

/// Whether `cut` is behind `from` (same server lifetime): `from`'s snapshot sees a
/// transaction `cut`'s does not. A cut partway through a page (a hub catching up reads
/// page by page) counts as behind until the page is done: the rows of it that `from`
/// has read may not be read yet.
fn behind(cut: &Position, from: &Position) -> bool {
    let same_server = match (cut.origin, from.origin) {
        (Some(a), Some(b)) => a.server == b.server,
        _ => true,
    };
    same_server && !from.cursor.seen_by(&cut.cursor)
}

impl Session {
    /// This connection resumes its channels (it brought a key and the hub keeps positions).
    pub(super) fn resumes(&self) -> bool {
        self.resume.is_some() && self.svc.resume.is_some()
    }

    /// Claims the parked row of this channel, if the connection resumes.
    pub(super) async fn claim(&self, topic: &str, config: &JoinConfig) -> Option<Claim> {
        let (conn, handle) = (self.resume.as_ref()?, self.svc.resume.as_ref()?);
        let ident = ChannelIdent {
            key: conn.key.clone(),
            topic: topic.into(),
            private: config.private,
            bindings: Value::Array(config.postgres_changes.clone()),
        };
        let owner = ResumeHandle::new_owner();
        let found = handle.take(&ident.holder(), &owner).await;
        if let Err(e) = &found {
            tracing::warn!(conn_id = self.conn_id, topic, error = %e, "could not read the parked subscription");
        }
        Some(Claim {
            ident,
            owner,
            found,
        })
    }

    /// A channel parked by a hub whose reader had got further than this one's (it moved
    /// here from a node that was ahead): waits until dispatch here has passed its
    /// position, at most until the connection's reach deadline (`REACH_WAIT` from the
    /// first such wait of a reconnect, shared by the joins sent with it). Registered
    /// before, it would receive the changes in between again, live, after a replay of
    /// nothing. Called after the join reply.
    pub(super) async fn reach(&mut self, claim: &Claim) {
        let Ok(Found::At(from)) = &claim.found else {
            return;
        };
        let Ok(from) = Position::parse(from) else {
            return;
        };
        let passed = |mark: &Option<Mark>| {
            let cut = mark
                .as_ref()
                .and_then(|m| Position::parse(&m.position).ok());
            !cut.is_some_and(|cut| behind(&cut, &from))
        };
        let mut delivered = self.svc.changes.progress().delivered();
        if passed(&delivered.borrow()) {
            return;
        }
        tracing::debug!(
            conn_id = self.conn_id,
            "resume: waiting for this hub to reach the channel's position"
        );
        let now = tokio::time::Instant::now();
        let deadline = match self.reach_deadline {
            Some(d) if now < d + REACH_SHARED => d,
            _ => now + REACH_WAIT,
        };
        self.reach_deadline = Some(deadline);
        if deadline <= now {
            // This reconnect's wait is spent (and logged): register behind.
            tracing::debug!(
                conn_id = self.conn_id,
                "resume: registering behind the channel's position"
            );
            return;
        }
        // A connection closed meanwhile (its client gone) stops waiting: the channel is
        // registered and parked again at once, still at its position.
        let closed = self.outbox.close_token();
        tokio::select! {
            reached = tokio::time::timeout_at(deadline, delivered.wait_for(passed)) => {
                if reached.is_err() {
                    tracing::info!(conn_id = self.conn_id, "resume: this hub did not reach the channel's position in time; changes in between may arrive twice");
                }
            }
            _ = closed.cancelled() => {}
        }
    }

    /// Tracks the channel's position from `cut` on and spawns its catch-up; `None` when
    /// dispatch has no position yet (the gate opens at once, nothing recovered).
    pub(super) fn catch_up(
        &self,
        claim: Claim,
        cut: Option<Mark>,
        gate: Arc<Gate>,
        target: ReplayTarget,
        join_ref: Arc<str>,
    ) -> Option<Arc<LiveChannel>> {
        let (conn, handle) = (self.resume.as_ref()?, self.svc.resume.clone()?);
        let topic = target.key.topic.clone();
        let vsn = self.vsn;
        let tell = move |outcome: Resumed| {
            let payload = SystemMessage::Resume(outcome).payload(super::channel_name(&topic));
            protocol::encode(vsn, Some(&join_ref), None, &topic, "system", &payload)
        };
        let Some(cut) = cut else {
            gate.open([tell(Resumed::NotRecovered(NotRecovered::Failed))]);
            return None;
        };
        let from = match &claim.found {
            Ok(Found::At(position)) => Some(position.clone()),
            _ => None,
        };
        let unconfirmed = from.clone().unwrap_or_else(|| cut.position.to_string());
        let ack = Arc::new(ChannelAck::new(cut.clone(), unconfirmed, u64::MAX));
        let live = Arc::new(LiveChannel::new(
            claim.ident,
            claim.owner,
            conn.acks.clone(),
            ack.clone(),
        ));
        handle.track(live.clone());
        let (acks, out) = (conn.acks.clone(), self.outbox.clone());
        let conn_id = self.conn_id;
        tokio::spawn(async move {
            let outcome = match (claim.found, from) {
                (Ok(_), Some(from)) => {
                    match handle.replay(&target, &from, &cut.position, &out).await {
                        Ok(Some(count)) => Resumed::Recovered { count },
                        Ok(None) => Resumed::NotRecovered(NotRecovered::TooMany {
                            max: handle.config().max_replay,
                        }),
                        Err(e) => {
                            tracing::warn!(conn_id, error = %e, "could not replay a resumed subscription");
                            Resumed::NotRecovered(NotRecovered::Failed)
                        }
                    }
                }
                (Ok(Found::Expired), _) => Resumed::NotRecovered(NotRecovered::Expired),
                (Ok(Found::Pruned), _) => Resumed::NotRecovered(NotRecovered::Pruned),
                (Ok(_), _) => Resumed::NotRecovered(NotRecovered::Unknown),
                (Err(_), _) => Resumed::NotRecovered(NotRecovered::Failed),
            };
            handle.count(&outcome);
            gate.open([tell(outcome)]);
            ack.caught_up(acks.next_ping_id());
        });
        Some(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_is_behind_a_position_only_when_that_has_read_more_on_the_same_server() {
        let p = |s: &str| Position::parse(s).unwrap();
        assert!(behind(&p("100:/~1.5"), &p("105:/~1.9")));
        // A transaction still open at the cut, finished for the position.
        assert!(behind(&p("105:101/~1.5"), &p("105:/~1.9")));
        assert!(!behind(&p("105:/~1.5"), &p("100:/~1.9")), "ahead");
        assert!(!behind(&p("105:/~1.5"), &p("105:/~1.9")), "the same");
        assert!(
            !behind(&p("100:/~1.5"), &p("105:/~2.9")),
            "another server lifetime"
        );
        // Catching up page by page: behind until the page is read whole.
        assert!(behind(&p("100:/110:@7/~1.5"), &p("105:/~1.9")));
        assert!(!behind(&p("105:/110:@7/~1.5"), &p("105:/~1.9")));
    }
}
