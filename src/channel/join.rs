//! `phx_join`, in named steps: admit (topic, join rate, channel count, rejoin),
//! authorize (token -> claims), validate (postgres_changes entries), claim the parked row
//! when the connection resumes, then reply and register (router membership, presence
//! state, subscriptions, at dispatch's cut) and report.

use std::sync::Arc;

use serde_json::{json, Value};

use super::join_config::JoinConfig;
use super::resume::Claim;
use super::session::{now_unix, Channel, End, Session};
use crate::auth::{looks_like_jwt, Claims};
use crate::changes::{Subscriber, Validated, Viewer};
use crate::protocol::{Close, Inbound, InboundPayload, ReplyError, SystemMessage, TokenError};
use crate::router::outbox::ChannelOutbox;
use crate::router::{Member, TopicKey};
use crate::telemetry::next_id;

/// A join that passed admission and authorization.
struct Admitted {
    config: JoinConfig,
    /// The user token the join brought, if it brought a JWT.
    token: Option<String>,
    claims: Claims,
}

impl Session {
    pub(super) async fn join(&mut self, msg: Inbound) {
        let admitted = match self
            .admit(&msg)
            .and_then(|config| self.authorize(&msg.topic, config))
        {
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
        tracing::debug!(conn_id = self.conn_id, topic = %msg.topic, role = %admitted.claims.role, user_token = admitted.token.is_some(), "join");
        let validated = if admitted.config.postgres_changes.is_empty() {
            None
        } else {
            Some(
                self.svc
                    .changes
                    .validate(&admitted.config.postgres_changes)
                    .await,
            )
        };
        let claim = self.claim(&msg.topic, &admitted.config).await;
        self.register(&msg, admitted, validated, claim);
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
        if self.joins.check().is_err() {
            self.svc.metrics.limit_hit(self.conn_id, "joins_per_second");
            return Err(ReplyError::TooManyJoins);
        }
        if self.channels.contains_key(&msg.topic) {
            self.close_channel(&msg.topic, End::Dropped);
        } else if self.channels.len() >= self.svc.limits.max_channels_per_connection {
            self.svc
                .metrics
                .limit_hit(self.conn_id, "channels_per_connection");
            return Err(ReplyError::TooManyChannels);
        }
        let payload = match &msg.payload {
            InboundPayload::Json(v) => v,
            InboundPayload::Broadcast(_) => &Value::Null,
        };
        Ok(JoinConfig::parse(payload))
    }

    /// The claims the channel runs with: the join's user token when it brings a JWT,
    /// else the connection's apikey (PROTOCOL.md §7, the realtime-js token race).
    fn authorize(&self, topic: &str, config: JoinConfig) -> Result<Admitted, ReplyError> {
        let token = config.access_token.clone().filter(|t| looks_like_jwt(t));
        let claims = match &token {
            Some(t) => self.svc.verifier.verify(t).map_err(ReplyError::Token)?,
            None => self.conn_claims.clone(),
        };
        let now = now_unix();
        if claims.exp <= now {
            return Err(ReplyError::Token(TokenError::Expired {
                seconds_ago: now - claims.exp,
            }));
        }
        if config.private && &*claims.role != "service_role" {
            // Private-channel authorization (realtime.messages policies) is not built yet:
            // refuse rather than serve a private topic without its policies.
            return Err(ReplyError::ReadDenied {
                channel: super::channel_name(topic).to_owned(),
            });
        }
        Ok(Admitted {
            config,
            token,
            claims,
        })
    }

    /// Replies ok, makes the channel a member of its topic (queueing `presence_state`) and
    /// subscribes its valid postgres_changes entries, both at dispatch's cut, and reports
    /// each entry's outcome. A resuming channel's live frames wait behind a gate until its
    /// catch-up is queued.
    fn register(
        &mut self,
        msg: &Inbound,
        admitted: Admitted,
        validated: Option<Validated>,
        claim: Option<Claim>,
    ) {
        let Admitted {
            config,
            token,
            claims,
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
        let reply_entries = validated
            .as_ref()
            .map(|v| v.reply.clone())
            .unwrap_or_default();
        self.reply(msg, "ok", &json!({ "postgres_changes": reply_entries }));
        let viewer = Arc::new(Viewer::from_claims(&claims));
        let (outbox, gate) = match &claim {
            Some(_) => {
                let (outbox, gate) = ChannelOutbox::gated(self.outbox.clone());
                (outbox, Some(gate))
            }
            None => (ChannelOutbox::direct(self.outbox.clone()), None),
        };
        let (subscriptions, errors) = validated
            .map(|v| (v.subscriptions, v.errors))
            .unwrap_or_default();
        let replayed = claim.as_ref().map(|_| subscriptions.clone());
        let member_of = Member {
            id: member,
            conn_id: self.conn_id,
            join_ref: join_ref.clone(),
            vsn: self.vsn,
            outbox: outbox.clone(),
            broadcast_self: config.broadcast_self,
            presence: config.presence_enabled,
        };
        let subscribed = !subscriptions.is_empty();
        let subscriber = Subscriber {
            member,
            conn_id: self.conn_id,
            topic: key.topic.clone(),
            vsn: self.vsn,
            outbox,
            viewer: viewer.clone(),
        };
        let (router, changes) = (&self.svc.router, &self.svc.changes);
        let (cut, ()) = changes.progress().at_cut(|| {
            router.join(&key, member_of);
            if subscribed {
                changes.subscribe(subscriber, subscriptions);
            }
        });
        if subscribed {
            self.system(&msg.topic, &join_ref, &SystemMessage::SubscribedToPostgres);
        }
        for e in errors {
            self.system(&msg.topic, &join_ref, &SystemMessage::Changes(e));
        }
        let live = match (claim, gate) {
            (Some(claim), Some(gate)) => {
                let target = crate::changes::ReplayTarget {
                    key: key.clone(),
                    vsn: self.vsn,
                    viewer,
                    subscriptions: replayed.unwrap_or_default(),
                };
                self.catch_up(claim, cut, gate, target, join_ref.clone())
            }
            _ => None,
        };
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
                token,
                exp: claims.exp,
                live,
            },
        );
    }
}
