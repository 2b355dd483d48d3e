//! A join on a connection that opted in to resume: claim the channel's parked row before
//! registering, then (in the background, so the connection keeps answering) replay the
//! gap from where it left off to dispatch's cut, tell the client how it went, and open
//! the gate for live frames. See `resume` for positions and parked rows.
//!
//! A channel may come from a hub that had read further than this one (another node, or
//! this hub's reader stalled): its position is ahead of dispatch's cut. It registers at
//! once all the same; the replay then has nothing to send, and what this hub reads
//! between the cut and that position, the channel was sent already: its subscriber and
//! router member skip it (`changes_sent`, `broadcasts_sent`), and its acknowledged
//! position stays where it resumed until dispatch here has passed it.

use std::sync::Arc;

use serde_json::Value;

use super::join_config::JoinConfig;
use super::session::Session;
use crate::capture::Position;
use crate::changes::{Mark, ReplayTarget, Sent};
use crate::protocol::{self, NotRecovered, Resumed, SystemMessage};
use crate::resume::{ChannelAck, ChannelIdent, Found, LiveChannel, ResumeError, ResumeHandle};
use crate::router::outbox::Gate;
use crate::router::Covered;

/// A parked row claimed for a joining channel.
pub(super) struct Claim {
    ident: ChannelIdent,
    owner: String,
    found: Result<Found, ResumeError>,
    /// An entry of the join was refused now (its table renamed or dropped while parked,
    /// say): its missed changes are not in the replay.
    refused: bool,
}

impl Claim {
    /// The claim of a join that refused some of its entries (`refused`).
    pub(super) fn with_refused(self, refused: bool) -> Claim {
        Claim { refused, ..self }
    }

    /// The parked row could not be read (the database is unreachable).
    pub(super) fn unreadable(&self) -> bool {
        self.found.is_err()
    }

    /// The channel's position, when dispatch here (at `cut`, where the channel registers)
    /// is behind it: the hub the channel left had read further. The changes in between
    /// were sent already; this hub reads them later and must not send them again.
    pub(super) fn ahead_of(&self, cut: Option<&Mark>) -> Option<Arc<Position>> {
        let Ok(Found::At(from)) = &self.found else {
            return None;
        };
        let from = Position::parse(from).ok()?;
        let cut = Position::parse(&cut?.position).ok()?;
        cut.behind(&from).then(|| Arc::new(from))
    }
}

/// The changes a channel resuming from `from` was sent already (`Claim::ahead_of`).
pub(super) fn changes_sent(from: &Arc<Position>) -> Sent {
    let from = from.clone();
    Arc::new(move |xid, id| from.has_read(xid, id))
}

/// The database broadcasts a channel resuming from `from` was sent already, judged by
/// transaction alone: a row the position counts as read by its id only (read ahead, or
/// on an unfinished page) may come again, never be missed.
pub(super) fn broadcasts_sent(from: &Arc<Position>) -> Covered {
    let from = from.clone();
    Arc::new(move |xid| from.has_read(xid, i64::MAX))
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
            refused: false,
        })
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
        ahead: Option<Arc<Position>>,
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
        // Where to replay from, or why there is nothing to replay from.
        let from = match &claim.found {
            Ok(Found::At(position)) => Ok(position.clone()),
            Ok(Found::Expired) => Err(NotRecovered::Expired),
            Ok(Found::Pruned) => Err(NotRecovered::Pruned),
            Ok(Found::ToldRefetch(why)) => Err(*why),
            Ok(Found::Unknown) => Err(NotRecovered::Unknown),
            Err(_) => Err(NotRecovered::Failed),
        };
        let unconfirmed = match &from {
            Ok(position) => position.clone(),
            Err(_) => cut.position.to_string(),
        };
        let ack = Arc::new(ChannelAck::new(cut.clone(), unconfirmed, u64::MAX, ahead));
        // Known before it is told: a join of this channel again meanwhile is told to
        // refetch as well.
        if let Err(why) = from {
            ack.told_refetch(why);
        }
        let live = Arc::new(LiveChannel::new(
            claim.ident,
            claim.owner,
            conn.acks.clone(),
            ack.clone(),
        ));
        handle.track(live.clone());
        let (acks, out) = (conn.acks.clone(), self.outbox.clone());
        let conn_id = self.conn_id;
        let refused = claim.refused;
        tokio::spawn(async move {
            let outcome = match from {
                Err(why) => Resumed::NotRecovered(why),
                Ok(from) => match handle.replay(&target, &from, &cut.position, &out).await {
                    Ok(Some(_)) if refused => Resumed::NotRecovered(NotRecovered::Refused),
                    Ok(Some(count)) => Resumed::Recovered { count },
                    Ok(None) => Resumed::NotRecovered(NotRecovered::TooMany {
                        max: handle.config().max_replay,
                    }),
                    Err(e) => {
                        tracing::warn!(conn_id, error = %e, "could not replay a resumed subscription");
                        Resumed::NotRecovered(NotRecovered::Failed)
                    }
                },
            };
            if let Resumed::NotRecovered(why) = outcome {
                ack.told_refetch(why);
            }
            handle.count(&outcome);
            gate.open([tell(outcome)]);
            ack.caught_up(acks.next_ping_id());
        });
        Some(live)
    }
}
