//! A channel's `postgres_changes` entries, subscribed again on each new token. Supabase
//! subscribes a channel's entries again with the new claims whenever an `access_token` is
//! applied, so:
//!
//! - a channel joined before the user signed in (the apikey's role, which may not read the
//!   table) starts receiving once `setAuth` sends the user's token;
//! - an entry the new token's role may not have (a filter on a column it may not select,
//!   a table it may not read) stops, with its error, as at join: which rows match a
//!   filter would otherwise tell a hidden column's values.
//!
//! Entries that failed because the database could not be reached are also tried again
//! every 5 to 10 seconds, as Supabase retries them, until they subscribe: a channel that
//! joined while Postgres was down starts receiving once it is back. A new token checked
//! while the database cannot be reached leaves the subscriptions as they are until then.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use super::session::Session;
use crate::auth::Claims;
use crate::changes::{
    subscription_id, Sent, Subscriber, Subscription, TableScope, Validated, Viewer,
};
use crate::protocol::SystemMessage;
use crate::router::outbox::ChannelOutbox;

/// A channel's `postgres_changes` entries, to subscribe them again on a new token.
pub(super) struct ChangesEntries {
    /// Every entry of the join, as it sent them.
    entries: Arc<[Value]>,
    /// The ids of the entries not subscribed now.
    failed: Vec<u32>,
    outbox: ChannelOutbox,
    /// The claims they were last tried with (the channel's, in force).
    claims: Claims,
    /// When to try them again because the database could not be reached; `None` when
    /// they did not fail for that (only a new token tries them again).
    retry_at: Option<Instant>,
    /// `Subscriber::sent` of the channel (it resumed ahead of this hub), kept when its
    /// subscriptions are replaced.
    pub(super) sent: Option<Sent>,
}

impl ChangesEntries {
    /// `None` when the join had no entries.
    pub(super) fn of(
        entries: &[Value],
        validated: &Validated,
        outbox: &ChannelOutbox,
        claims: &Claims,
    ) -> Option<Box<ChangesEntries>> {
        (!entries.is_empty()).then(|| {
            Box::new(ChangesEntries {
                entries: entries.into(),
                failed: failed(entries, validated).map(|(id, _)| id).collect(),
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

/// The ids of the entries `validated` (their validation, in order) did not subscribe, each
/// with its place among `validated.errors` (one per entry that failed, in order).
fn failed<'a>(
    entries: &'a [Value],
    validated: &'a Validated,
) -> impl Iterator<Item = (u32, usize)> + 'a {
    entries
        .iter()
        .map(subscription_id)
        .filter(|id| !validated.subscriptions.iter().any(|s| s.id == *id))
        .enumerate()
        .map(|(i, id)| (id, i))
}

/// `entries` with each table renamed since it was subscribed (`current`, the channel's
/// subscriptions now, hold its subscription under the name of now, `dispatch::ddl`) named
/// as it is now, so that they are judged again as the same table; and for each entry so
/// named, (its id under the new name, its id as joined).
fn as_named_now(entries: &[Value], current: &[Subscription]) -> (Vec<Value>, Vec<(u32, u32)>) {
    let mut ids = Vec::new();
    let named = entries
        .iter()
        .map(|entry| {
            let id = subscription_id(entry);
            fn named(s: &Subscription, id: u32) -> Option<(&Arc<str>, &Arc<str>)> {
                match &s.scope {
                    TableScope::Table { schema, table } if s.id == id => Some((schema, table)),
                    _ => None,
                }
            }
            let joined = (
                entry
                    .get("schema")
                    .and_then(Value::as_str)
                    .unwrap_or("public"),
                entry.get("table").and_then(Value::as_str),
            );
            // The newest name: the table's last scope added (`SubscriptionIndex::rename`).
            let now = current.iter().rev().find_map(|s| named(s, id));
            match (now, entry.as_object()) {
                (Some((schema, table)), Some(obj))
                    if (joined.0, joined.1) != (&**schema, Some(&**table)) =>
                {
                    let mut obj = obj.clone();
                    obj.insert("schema".into(), Value::from(&**schema));
                    obj.insert("table".into(), Value::from(&**table));
                    let renamed = Value::Object(obj);
                    ids.push((subscription_id(&renamed), id));
                    renamed
                }
                _ => entry.clone(),
            }
        })
        .collect();
    (named, ids)
}

impl Session {
    /// After a new token was applied to `topic`'s channel (or the database is back):
    /// validates every entry again with `claims`, replaces the channel's subscriptions
    /// with those that pass, tells the error of each entry that fails now but did not
    /// before, then `Subscribed to PostgreSQL` when any entry is subscribed (as Supabase
    /// says it after each token it applies). Entries that still fail stay quiet: their
    /// error was told.
    pub(super) async fn resubscribe(&mut self, topic: &str, claims: &Claims) {
        let Some(entries) = self
            .channels
            .get(topic)
            .and_then(|ch| ch.entries.as_ref())
            .map(|e| e.entries.clone())
        else {
            return;
        };
        let member = self.channels.get(topic).map(|ch| ch.member);
        let current = member.map_or_else(Vec::new, |m| self.svc.changes.subscriptions_of(m));
        let (named, ids) = as_named_now(&entries, &current);
        let mut validated = self.svc.changes.validate(&named, &claims.role).await;
        // Bound under a table's name of now: still the ids the join was answered with.
        for sub in &mut validated.subscriptions {
            if let Some((_, id)) = ids.iter().find(|(now, _)| *now == sub.id) {
                sub.id = *id;
            }
        }
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        let Some(state) = ch.entries.as_mut() else {
            return;
        };
        state.claims = claims.clone();
        state.retry_at = retry_at(&validated);
        if validated.unavailable() {
            // Judged again once the database is back; row scope follows the new claims
            // meanwhile.
            return;
        }
        let failed_now: Vec<(u32, usize)> = failed(&entries, &validated).collect();
        let stopped: Vec<_> = failed_now
            .iter()
            .filter(|(id, _)| !state.failed.contains(id))
            .filter_map(|(_, i)| validated.errors.get(*i).cloned())
            .collect();
        let subscribed = !validated.subscriptions.is_empty();
        state.failed = failed_now.into_iter().map(|(id, _)| id).collect();
        let subscriber = Subscriber {
            member: ch.member,
            conn_id: self.conn_id,
            topic: self.svc.router.shared_name(&ch.key),
            join_ref: ch.join_ref.clone(),
            vsn: self.vsn,
            outbox: state.outbox.clone(),
            viewer: Arc::new(Viewer::from_claims(claims)),
            sent: state.sent.clone(),
        };
        let join_ref = ch.join_ref.clone();
        let changes = &self.svc.changes;
        changes
            .progress()
            .at_cut(|_| changes.subscribe(subscriber, validated.subscriptions));
        for e in stopped {
            tracing::debug!(conn_id = self.conn_id, topic, role = %claims.role, error = %e, "entry refused on a new token");
            self.system(topic, &join_ref, &SystemMessage::Changes(e));
        }
        if subscribed {
            tracing::debug!(conn_id = self.conn_id, topic, role = %claims.role, "entries subscribed on a new token");
            self.system(topic, &join_ref, &SystemMessage::SubscribedToPostgres);
        }
    }
}

impl Session {
    /// When a channel's entries are next tried again for want of the database.
    pub fn next_retry(&self) -> Option<Instant> {
        self.channels
            .values()
            .filter_map(|ch| ch.entries.as_ref()?.retry_at)
            .min()
    }

    /// Tries again, with the claims in force, the entries of each channel whose retry is
    /// due (`next_retry`).
    pub async fn retry_unavailable(&mut self, now: Instant) {
        let due: Vec<(String, Claims)> = self
            .channels
            .iter()
            .filter_map(|(topic, ch)| {
                let e = ch.entries.as_ref()?;
                (e.retry_at? <= now).then(|| (topic.clone(), e.claims.clone()))
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
