//! `postgres_changes` entries a join could not subscribe, tried again on each new token.
//! Supabase subscribes a channel's entries again with the new claims whenever an
//! `access_token` is applied, so a channel joined before the user signed in (the apikey's
//! role, which may not read the table) starts receiving once `setAuth` sends the user's
//! token. Only the entries that failed are checked again: the others stay subscribed as
//! they were, with row scope judged by the new claims (`Changes::set_viewer`).

use std::sync::Arc;

use serde_json::Value;

use super::session::Session;
use crate::auth::Claims;
use crate::changes::{Subscriber, Subscription, Validated, Viewer};
use crate::protocol::SystemMessage;
use crate::router::outbox::ChannelOutbox;

/// What a channel keeps to subscribe the entries its join could not.
pub(super) struct Unsubscribed {
    /// The entries, as the join sent them, not subscribed yet.
    entries: Vec<Value>,
    /// The channel's subscriptions: a member's are replaced as a whole.
    subscribed: Vec<Subscription>,
    outbox: ChannelOutbox,
}

impl Unsubscribed {
    /// `None` when every entry of the join was subscribed.
    pub(super) fn of(
        entries: &[Value],
        validated: &Validated,
        outbox: &ChannelOutbox,
    ) -> Option<Box<Unsubscribed>> {
        let failed = failed(entries, validated);
        (!failed.is_empty()).then(|| {
            Box::new(Unsubscribed {
                entries: failed,
                subscribed: validated.subscriptions.clone(),
                outbox: outbox.clone(),
            })
        })
    }
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
            return;
        }
        let still = failed(&entries, &validated);
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
        };
        let subscriptions = unsubscribed.subscribed.clone();
        let join_ref = ch.join_ref.clone();
        if !still.is_empty() {
            unsubscribed.entries = still;
            ch.unsubscribed = Some(unsubscribed);
        }
        let changes = &self.svc.changes;
        changes
            .progress()
            .at_cut(|| changes.subscribe(subscriber, subscriptions));
        tracing::debug!(conn_id = self.conn_id, topic, role = %claims.role, "entries subscribed on a new token");
        self.system(topic, &join_ref, &SystemMessage::SubscribedToPostgres);
    }
}
