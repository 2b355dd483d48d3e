//! A private channel in the session: asks its `authz::ChannelAccess` (decisions cached per
//! channel and token) before a send or track, applies presence read to the router, and
//! ends the channel when a refreshed token lost read, with the text the client surfaces.

use super::channel_name;
use super::session::Session;
use crate::auth::Claims;
use crate::authz::{self, AuthzError, ChannelAccess, Extension, Refused};
use crate::protocol::ChannelError;
use crate::router::Access;

/// What the router may deliver to a private channel.
pub(super) fn router_access(access: &ChannelAccess) -> Access {
    let read = access.read();
    Access {
        broadcast: read.broadcast,
        presence: read.presence == Some(true),
    }
}

fn refused(channel: &str, why: Refused) -> ChannelError {
    let channel = channel.to_owned();
    match why {
        Refused::ReadDenied => ChannelError::ReadDenied { channel },
        Refused::ReadLost => ChannelError::ReadLost { channel },
        Refused::Failed(AuthzError::Policy(problem)) => {
            ChannelError::ReadCheckFailed { channel, problem }
        }
        Refused::Failed(AuthzError::Unavailable(_)) => ChannelError::DatabaseUnavailable,
    }
}

impl Session {
    /// Whether this channel may write `extension` (always on public channels).
    pub(super) async fn may_write(&mut self, topic: &str, extension: Extension) -> bool {
        let Some(access) = self
            .channels
            .get_mut(topic)
            .and_then(|c| c.private.as_mut())
        else {
            return self.channels.contains_key(topic);
        };
        let (allowed, error) = access.may_write(&self.svc.authz, extension).await;
        if let Some(e) = error {
            tracing::warn!(conn_id = self.conn_id, topic, error = %e, extension = extension.as_str(), "write check failed");
        }
        allowed
    }

    /// A first track on a private channel that joined without presence: presence read is
    /// decided now (Supabase does the same), so the channel receives presence only if its
    /// policies let it.
    pub(super) async fn decide_presence_read(&mut self, topic: &str) {
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        let Some(access) = ch.private.as_mut() else {
            return;
        };
        match access.decide_presence_read(&self.svc.authz).await {
            Ok(true) => self
                .svc
                .router
                .set_access(&ch.key, ch.member, router_access(access)),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(conn_id = self.conn_id, topic, error = %e, "presence read check failed")
            }
        }
    }

    /// A refreshed token on a private channel: its decisions are made again; losing read
    /// ends the channel.
    pub(super) async fn redecide(
        &mut self,
        topic: &str,
        claims: &Claims,
    ) -> Result<(), ChannelError> {
        let Some(ch) = self.channels.get_mut(topic) else {
            return Ok(());
        };
        let Some(access) = ch.private.as_ref() else {
            return Ok(());
        };
        let channel = channel_name(topic);
        let ctx = authz::Context::new(channel, claims, access.context().headers.clone());
        let renewed = access
            .refreshed(&self.svc.authz, ctx)
            .await
            .map_err(|why| refused(channel, why))?;
        self.svc
            .router
            .set_access(&ch.key, ch.member, router_access(&renewed));
        ch.private = Some(renewed);
        Ok(())
    }
}
