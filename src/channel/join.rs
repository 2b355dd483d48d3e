//! `phx_join`, in named steps: admit (topic, join rate, channel count, rejoin),
//! authorize (token -> claims; a private channel's read policies), validate (replay
//! parameters, postgres_changes entries, and with `postgres_changes_options.wait` capture
//! being live), claim the parked row when the connection resumes, then register (router
//! membership and subscriptions at dispatch's cut, a broadcast replay with live frames
//! held back until it is sent, presence state, a resume's catch-up) and report.

use std::sync::Arc;

use serde_json::{json, Value};

use super::channel_name;
use super::join_config::JoinConfig;
use super::private::router_access;
use super::resume::{self, Claim};
use super::retry::ChangesEntries;
use super::session::{now_unix, Channel, End, Session};
use crate::auth::{is_user_token, Claims};
use crate::authz::{self, AuthzError, ChannelAccess, Replay, ReplayRequest, Replayed};
use crate::changes::{Subscriber, Validated, Viewer};
use crate::protocol::{
    self, refuse_nul, Broadcast, BroadcastPayload, Close, Inbound, InboundPayload, ReplyError,
    SystemMessage, TokenError,
};
use crate::router::outbox::ChannelOutbox;
use crate::router::{Access, Member, TopicKey};
use crate::telemetry::next_id;

/// Longest topic a channel may have, in bytes: a joined topic is kept for the channel's
/// life (Supabase has no bound; without one a connection's 100 channels of 5 MB topics
/// would hold 500 MB; with it, 800 kB).
pub const MAX_TOPIC_BYTES: usize = 8192;

/// A join that passed admission and authorization.
struct Admitted {
    config: JoinConfig,
    /// The user token the join brought, if it brought one (not an opaque `sb_` key).
    token: Option<String>,
    claims: Claims,
    /// `Some` for a private channel: what its token may do there.
    private: Option<ChannelAccess>,
}

impl Session {
    pub(super) async fn join(&mut self, msg: Inbound) {
        let admitted = match self.admit(&msg) {
            Ok(config) => self.authenticate(config).await,
            Err(e) => Err(e),
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(e) => {
                let disconnect = e == ReplyError::TooManyJoins;
                self.reply_error(&msg, e);
                if disconnect {
                    // Supabase disconnects a client that joins too fast, after the reply.
                    self.outbox.close(Close::TooManyJoins);
                }
                return;
            }
        };
        let admitted = match self.authorize(&msg.topic, admitted).await {
            Ok(a) => a,
            Err(e) => return self.reply_error(&msg, e),
        };
        tracing::debug!(conn_id = self.conn_id, topic = %msg.topic, role = %admitted.claims.role, user_token = admitted.token.is_some(), private = admitted.private.is_some(), "join");
        let replay = match check_replay(&msg.topic, &admitted) {
            Ok(r) => r,
            Err(e) => return self.reply_error(&msg, e),
        };
        let validated = if admitted.config.postgres_changes.is_empty() {
            None
        } else {
            Some(
                self.svc
                    .changes
                    .validate(&admitted.config.postgres_changes, &admitted.claims.role)
                    .await,
            )
        };
        if let (Some(wait), Some(v)) = (admitted.config.changes_wait, &validated) {
            if let Err(e) = self.wait_for_changes(wait, v).await {
                return self.reply_error(&msg, e);
            }
        }
        // A resuming channel is refused, before it takes its parked row, when the
        // database is out for a moment: joining now would answer `recovered: false`
        // (capture has no position yet; the cut never goes back to `None`), or answer
        // `recovered: true` without the entries the catalog could not check, whose
        // changes would then be skipped for good as the position moves on. The
        // client's rejoin comes back for its gap.
        if self.resumes() {
            let no_cut = self.svc.changes.progress().at_cut(|_| ()).0.is_none();
            if no_cut || validated.as_ref().is_some_and(Validated::unavailable) {
                return self.reply_error(&msg, ReplyError::DatabaseUnavailable);
            }
        }
        let claim = self.claim(&msg.topic, &admitted.config).await;
        if claim.as_ref().is_some_and(|c| c.unreadable()) {
            return self.reply_error(&msg, ReplyError::DatabaseUnavailable);
        }
        self.register(&msg, admitted, replay, validated, claim)
            .await;
    }

    /// Checks the topic and the per-connection limits. A join of a topic this session
    /// already joined closes the old channel first (Phoenix does the same).
    fn admit(&mut self, msg: &Inbound) -> Result<JoinConfig, ReplyError> {
        if !msg.topic.starts_with("realtime:") {
            return Err(ReplyError::UnmatchedTopic);
        }
        if msg.topic == "realtime:" {
            return Err(ReplyError::TopicRequired);
        }
        if msg.topic.len() > MAX_TOPIC_BYTES {
            return Err(ReplyError::TopicTooLong {
                max: MAX_TOPIC_BYTES,
            });
        }
        if self.joins.check().is_err() {
            self.svc.metrics.limit_hit(self.conn_id, "joins_per_second");
            return Err(ReplyError::TooManyJoins);
        }
        // Public topics too: a resuming channel's topic is looked up in Postgres.
        refuse_nul("topic", channel_name(&msg.topic)).map_err(ReplyError::BadTopic)?;
        let payload = match &msg.payload {
            InboundPayload::Json(v) => v,
            InboundPayload::Broadcast(_) => &Value::Null,
        };
        let config = JoinConfig::parse(payload);
        if self.svc.limits.private_only && !config.private {
            return Err(ReplyError::PrivateOnly);
        }
        self.check_changes_entries(&msg.topic, config.postgres_changes.len())?;
        if self.channels.contains_key(&msg.topic) {
            self.close_channel(&msg.topic, End::Dropped);
        } else if self.channels.len() >= self.svc.limits.max_channels_per_connection {
            self.svc
                .metrics
                .limit_hit(self.conn_id, "channels_per_connection");
            return Err(ReplyError::TooManyChannels);
        }
        Ok(config)
    }

    /// A join's `postgres_changes` entries against the per-join limit and, with the
    /// entries of this connection's other channels (a rejoined topic's old ones are
    /// replaced), the per-connection limit. Checked before any entry is looked at.
    fn check_changes_entries(&self, topic: &str, entries: usize) -> Result<(), ReplyError> {
        let limits = &self.svc.limits;
        if entries > limits.max_changes_per_join {
            self.svc.metrics.limit_hit(self.conn_id, "changes_per_join");
            return Err(ReplyError::TooManyChangesInJoin {
                max: limits.max_changes_per_join,
            });
        }
        let held: usize = self
            .channels
            .iter()
            .filter(|(t, _)| t.as_str() != topic)
            .map(|(_, ch)| ch.changes)
            .sum();
        if held + entries > limits.max_changes_per_connection {
            self.svc
                .metrics
                .limit_hit(self.conn_id, "changes_per_connection");
            return Err(ReplyError::TooManyChangesOnConnection {
                max: limits.max_changes_per_connection,
            });
        }
        Ok(())
    }

    /// The claims the channel runs with: the join's user token when it brings one, else
    /// the connection's apikey (PROTOCOL.md §7, the realtime-js token race).
    async fn authenticate(&self, config: JoinConfig) -> Result<Admitted, ReplyError> {
        let token = config.access_token.clone().filter(|t| is_user_token(t));
        let claims = match &token {
            Some(t) => self
                .svc
                .verifier
                .verify_fresh(t)
                .await
                .map_err(ReplyError::Token)?,
            None => self.conn_claims.clone(),
        };
        let now = now_unix();
        if claims.exp <= now {
            return Err(ReplyError::Token(TokenError::Expired {
                seconds_ago: now - claims.exp,
            }));
        }
        Ok(Admitted {
            config,
            token,
            claims,
            private: None,
        })
    }

    /// A private channel needs read on broadcast or presence (presence is probed only
    /// when enabled at join), decided by the `realtime.messages` policies.
    async fn authorize(&self, topic: &str, mut a: Admitted) -> Result<Admitted, ReplyError> {
        if !a.config.private {
            return Ok(a);
        }
        let channel = channel_name(topic);
        let ctx = authz::Context::new(channel, &a.claims, self.request_headers.clone());
        let access = ChannelAccess::decide(&self.svc.authz, ctx, a.config.presence_enabled)
            .await
            .map_err(|e| read_error(channel, e))?;
        if !access.read().any() {
            return Err(ReplyError::ReadDenied {
                channel: channel.to_owned(),
            });
        }
        a.private = Some(access);
        Ok(a)
    }

    /// `postgres_changes_options.wait`: every entry must be subscribable and capture
    /// connected within `wait`.
    async fn wait_for_changes(
        &self,
        wait: std::time::Duration,
        validated: &Validated,
    ) -> Result<(), ReplyError> {
        if let Some(e) = validated.errors.first() {
            return Err(ReplyError::ChangesRefused(e.clone()));
        }
        let timeout = ReplyError::ChangesWaitTimeout {
            ms: wait.as_millis() as u64,
        };
        let Some(capture) = &self.svc.capture else {
            return Err(timeout);
        };
        tokio::time::timeout(wait, capture.wait_connected())
            .await
            .map_err(|_| timeout)
    }

    /// Replies ok, makes the channel a member of its topic (queueing `presence_state`) and
    /// subscribes its valid postgres_changes entries, both at dispatch's cut, and reports
    /// each entry's outcome. A broadcast replay is read before the reply, with live frames
    /// for the member held until it is sent; a resuming channel's live frames wait behind
    /// a gate until its catch-up is queued.
    async fn register(
        &mut self,
        msg: &Inbound,
        admitted: Admitted,
        replay: Option<ReplayRequest>,
        validated: Option<Validated>,
        claim: Option<Claim>,
    ) {
        let Admitted {
            config,
            token,
            claims,
            private,
        } = admitted;
        let join_ref: Arc<str> = msg
            .join_ref
            .clone()
            .or_else(|| msg.ref_.clone())
            .unwrap_or_default()
            .into();
        let key = TopicKey {
            private: config.private,
            topic: msg.topic.as_str().into(),
        };
        let member = next_id();
        let viewer = Arc::new(Viewer::from_claims(&claims));
        let (outbox, gate) = match &claim {
            Some(_) => {
                let (outbox, gate) = ChannelOutbox::gated(self.outbox.clone());
                (outbox, Some(gate))
            }
            None => (ChannelOutbox::direct(self.outbox.clone()), None),
        };
        let router_member = Member {
            id: member,
            conn_id: self.conn_id,
            join_ref: join_ref.clone(),
            vsn: self.vsn,
            outbox: outbox.clone(),
            broadcast_self: config.broadcast_self,
            presence: config.presence_enabled,
            access: private.as_ref().map_or(Access::ALL, router_access),
            held: replay.is_some().then(Vec::new),
            covered: None,
        };
        // A replaying channel is a member before the replay reads (held, so nothing
        // overtakes the reply); any other joins at dispatch's cut, right after its reply.
        let (replayed, mut pending) = match replay {
            None => (None, Some(router_member)),
            Some(request) => {
                self.svc.router.join(&key, router_member);
                let channel = channel_name(&msg.topic);
                match self.svc.authz.replay(channel, request).await {
                    Ok(r) => (Some(r), None),
                    Err(e) => {
                        tracing::warn!(conn_id = self.conn_id, topic = %msg.topic, error = %e, "replay failed");
                        self.svc.router.leave(&key, member);
                        return self.reply_error(msg, ReplyError::ReplayFailed);
                    }
                }
            }
        };
        let reply_entries = validated
            .as_ref()
            .map(|v| v.reply.clone())
            .unwrap_or_default();
        self.reply(msg, "ok", &json!({ "postgres_changes": reply_entries }));
        let mut entries = validated
            .as_ref()
            .and_then(|v| ChangesEntries::of(&config.postgres_changes, v, &outbox, &claims));
        let (subscriptions, errors) = validated
            .map(|v| (v.subscriptions, v.errors))
            .unwrap_or_default();
        let resumed_subscriptions = claim.as_ref().map(|_| subscriptions.clone());
        // An entry refused now (its table renamed or dropped while parked, say) had its
        // changes of the gap left out of the replay.
        let refused = !errors.is_empty();
        let subscribed = !subscriptions.is_empty();
        let mut subscriber = Subscriber {
            member,
            conn_id: self.conn_id,
            topic: key.topic.clone(),
            join_ref: join_ref.clone(),
            vsn: self.vsn,
            outbox,
            viewer: viewer.clone(),
            sent: None,
        };
        let (router, changes) = (&self.svc.router, &self.svc.changes);
        let (cut, ahead) = changes.progress().at_cut(|cut| {
            let ahead = claim.as_ref().and_then(|c| c.ahead_of(cut));
            if claim.is_some() {
                // Dispatch keeps batches from this cut on, so that the gaps of other
                // channels resuming here can end where this one's ends (resume::restart).
                changes.progress().recent().start();
            }
            if let Some(mut m) = pending.take() {
                m.covered = ahead.as_ref().map(resume::broadcasts_sent);
                router.join(&key, m);
            }
            if subscribed {
                subscriber.topic = router.shared_name(&key);
                subscriber.sent = ahead.as_ref().map(resume::changes_sent);
                changes.subscribe(subscriber, subscriptions);
            }
            ahead
        });
        if let (Some(u), Some(from)) = (&mut entries, &ahead) {
            u.sent = Some(resume::changes_sent(from));
        }
        if let Some(r) = &replayed {
            self.send_replay(&msg.topic, &join_ref, r);
        }
        // Refused entries first: Supabase refuses the whole join then, and a client
        // waiting for the outcome hears the refusal before the entries that did subscribe.
        for e in errors {
            self.system(&msg.topic, &join_ref, &SystemMessage::Changes(e));
        }
        if subscribed {
            self.system(&msg.topic, &join_ref, &SystemMessage::SubscribedToPostgres);
        }
        if let Some(r) = replayed {
            let seam = r.seam;
            let sent = ahead.as_ref().map(resume::broadcasts_sent);
            self.svc.router.release(
                &key,
                member,
                Arc::new(move |xid| seam.covers(xid) || sent.as_ref().is_some_and(|s| s(xid))),
            );
        }
        let live = match (claim, gate) {
            (Some(claim), Some(gate)) => {
                let target = crate::changes::ReplayTarget {
                    key: key.clone(),
                    vsn: self.vsn,
                    viewer,
                    subscriptions: resumed_subscriptions.unwrap_or_default(),
                };
                let claim = claim.with_refused(refused);
                self.catch_up(claim, cut, gate, target, join_ref.clone(), ahead)
            }
            _ => None,
        };
        // `replication_ready`: told now when the hub reads the log, else once it does.
        let replication_deadline = match config.replication_ready {
            true if self.replicating() => {
                self.system(&msg.topic, &join_ref, &SystemMessage::ReplicationReady);
                None
            }
            true => Some(tokio::time::Instant::now() + self.svc.limits.replication_ready_timeout),
            false => None,
        };
        let changes = config.postgres_changes.len();
        let presence_key = if config.presence_key.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            config.presence_key
        };
        self.svc.metrics.joins.inc();
        self.svc.metrics.channels.inc();
        self.channels.insert(
            msg.topic.clone(),
            Channel {
                key,
                join_ref,
                member,
                ack: config.broadcast_ack,
                presence_key,
                changes,
                token,
                exp: claims.exp,
                live,
                private,
                entries,
                replication_deadline,
                presence_calls: Default::default(),
            },
        );
    }

    /// The replayed messages, oldest first, each with `meta: {id, replayed: true}`, and a
    /// note when the limit left older ones out. Binary messages reach v2 sockets only.
    fn send_replay(&self, topic: &str, join_ref: &str, r: &Replayed) {
        for m in &r.messages {
            let (payload, binary) = match &m.binary {
                Some(bytes) => (BroadcastPayload::Binary(bytes.clone()), true),
                None => (BroadcastPayload::Json(m.payload.clone()), false),
            };
            let b = Broadcast {
                event: m.event.clone(),
                payload,
                meta: Some(json!({ "id": m.id, "replayed": true })),
                binary_origin: binary,
            };
            match protocol::encode_channel_broadcast(self.vsn, Some(join_ref), topic, &b) {
                Some(frame) => self.send(frame, "broadcast"),
                None => self.svc.metrics.dropped("undeliverable_to_v1", 1),
            }
        }
        if r.stored > r.messages.len() as u64 {
            let note = SystemMessage::ReplayLeftOut {
                sent: r.messages.len(),
                stored: r.stored,
            };
            self.system(topic, join_ref, &note);
        }
    }
}

/// The join's replay request: refused on public channels, checked on private ones (which
/// need broadcast read for it).
fn check_replay(topic: &str, a: &Admitted) -> Result<Option<ReplayRequest>, ReplyError> {
    let Some(private) = &a.private else {
        return match a.config.replay_asked {
            true => Err(ReplyError::ReplayOnPublicChannel),
            false => Ok(None),
        };
    };
    match a.config.replay {
        Replay::None => Ok(None),
        Replay::Invalid => Err(ReplyError::ReplayParamsInvalid),
        Replay::Requested(_) if !private.read().broadcast => Err(ReplyError::ReadDenied {
            channel: channel_name(topic).to_owned(),
        }),
        Replay::Requested(r) => Ok(Some(r)),
    }
}

/// A failed read decision at join.
fn read_error(channel: &str, e: AuthzError) -> ReplyError {
    match e {
        AuthzError::Policy(problem) => ReplyError::ReadCheckFailed {
            channel: channel.to_owned(),
            problem,
        },
        AuthzError::Unavailable(_) => ReplyError::DatabaseUnavailable,
    }
}
