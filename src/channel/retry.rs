//! `postgres_changes` entries a join could not subscribe, tried again on each new token.
//! Supabase subscribes a channel's entries again with the new claims whenever an
//! `access_token` is applied, so a channel joined before the user signed in (the apikey's
//! role, which may not read the table) starts receiving once `setAuth` sends the user's
//! token. Only the entries that failed are checked again: the others stay subscribed as
//! they were, with row scope judged by the new claims (`Changes::set_viewer`).
//!
//! Entries that failed because the database could not be reached are also tried again
//! every 5 to 10 seconds, as Supabase retries them, until they subscribe: a channel that
//! joined while Postgres was down starts receiving once it is back.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use super::session::Session;
use crate::auth::Claims;
use crate::changes::{Sent, Subscriber, Subscription, Validated, Viewer};
use crate::protocol::SystemMessage;
use crate::router::outbox::ChannelOutbox;

/// What a channel keeps to subscribe the entries its join could not.
pub(super) struct Unsubscribed {
    /// The entries, as the join sent them, not subscribed yet.
    entries: Vec<Value>,
    /// The channel's subscriptions: a member's are replaced as a whole.
    subscribed: Vec<Subscription>,
    outbox: ChannelOutbox,
    /// The claims they were last tried with (the channel's, in force).
    claims: Claims,
    /// When to try them again because the database could not be reached; `None` when
    /// they failed for what they say (only a new token tries those again).
    retry_at: Option<Instant>,
    /// `Subscriber::sent` of the channel (it resumed ahead of this hub), kept when its
    /// subscriptions are replaced.
    pub(super) sent: Option<Sent>,
}

impl Unsubscribed {
    /// `None` when every entry of the join was subscribed.
    pub(super) fn of(
        entries: &[Value],
        validated: &Validated,
        outbox: &ChannelOutbox,
        claims: &Claims,
    ) -> Option<Box<Unsubscribed>> {
        let failed = failed(entries, validated);
        (!failed.is_empty()).then(|| {
            Box::new(Unsubscribed {
                entries: failed,
                subscribed: validated.subscriptions.clone(),
                outbox: outbox.clone(),
                claims: claims.clone(),
                retry_at: retry_at(validated),
                sent: None,
            })
        })
    }
}

/// When entries that failed as `validated` says are tried again: in 5 to 10 seconds when
/// the database could not be reached (Supabase's wait), else not before a new token.
fn retry_at(validated: &Validated) -> Option<Instant> {
    validated
        .unavailable()
        .then(|| Instant::now() + Duration::from_millis(rand::rng().random_range(5_000..10_000)))
}

/// The entries `validated` (their validation, in order) did not subscribe.
fn failed(entries: &[Value], validated: &Validated) -> Vec<Value> {
    entries
        .iter()
        .zip(&validated.reply)
        .filter(|(_, echoed)| {
            !validated
                .subscriptions
                .iter()
                .any(|s| echoed.get("id").and_then(Value::as_u64) == Some(u64::from(s.id)))
        })
        .map(|(entry, _)| entry.clone())
        .collect()
}

impl Session {
    /// After a new token was applied to `topic`'s channel: subscribes, with `claims`, the
    /// entries its join could not, and says so (`Subscribed to PostgreSQL`). Entries that
    /// still fail stay quiet: their error was told at join.
    pub(super) async fn resubscribe(&mut self, topic: &str, claims: &Claims) {
        let Some(entries) = self
            .channels
            .get(topic)
            .and_then(|ch| ch.unsubscribed.as_ref())
            .map(|u| u.entries.clone())
        else {
            return;
        };
        let validated = self.svc.changes.validate(&entries, &claims.role).await;
        if validated.subscriptions.is_empty() {
            if let Some(u) = self
                .channels
                .get_mut(topic)
                .and_then(|ch| ch.unsubscribed.as_mut())
            {
                u.claims = claims.clone();
                u.retry_at = retry_at(&validated);
            }
            return;
        }
        let still = failed(&entries, &validated);
        let retry = retry_at(&validated);
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        let Some(mut unsubscribed) = ch.unsubscribed.take() else {
            return;
        };
        unsubscribed.subscribed.extend(validated.subscriptions);
        let subscriber = Subscriber {
            member: ch.member,
            conn_id: self.conn_id,
            topic: self.svc.router.shared_name(&ch.key),
            join_ref: ch.join_ref.clone(),
            vsn: self.vsn,
            outbox: unsubscribed.outbox.clone(),
            viewer: Arc::new(Viewer::from_claims(claims)),
            sent: unsubscribed.sent.clone(),
        };
        let subscriptions = unsubscribed.subscribed.clone();
        let join_ref = ch.join_ref.clone();
        if !still.is_empty() {
            unsubscribed.entries = still;
            unsubscribed.claims = claims.clone();
            unsubscribed.retry_at = retry;
            ch.unsubscribed = Some(unsubscribed);
        }
        let changes = &self.svc.changes;
        changes
            .progress()
            .at_cut(|_| changes.subscribe(subscriber, subscriptions));
        tracing::debug!(conn_id = self.conn_id, topic, role = %claims.role, "entries subscribed on a new token");
        self.system(topic, &join_ref, &SystemMessage::SubscribedToPostgres);
    }
}

impl Session {
    /// When a channel's entries are next tried again for want of the database.
    pub fn next_retry(&self) -> Option<Instant> {
        self.channels
            .values()
            .filter_map(|ch| ch.unsubscribed.as_ref()?.retry_at)
            .min()
    }

    /// Tries again, with the claims in force, the entries of each channel whose retry is
    /// due (`next_retry`).
    pub async fn retry_unavailable(&mut self, now: Instant) {
        let due: Vec<(String, Claims)> = self
            .channels
            .iter()
            .filter_map(|(topic, ch)| {
                let u = ch.unsubscribed.as_ref()?;
                (u.retry_at? <= now).then(|| (topic.clone(), u.claims.clone()))
            })
            .collect();
        for (topic, claims) in due {
            tracing::debug!(
                conn_id = self.conn_id,
                topic,
                "entries tried again: the database was unreachable"
            );
            self.resubscribe(&topic, &claims).await;
        }
    }
}
