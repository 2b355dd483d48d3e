//! A private channel's permissions, cached per (channel, token) the way Supabase keeps
//! them: read decided at join (broadcast, and presence when enabled), write decided on
//! the first broadcast or track and remembered, everything decided again when the token
//! changes. Losing read on a refresh ends the channel.

use super::channel_name;
use super::session::Session;
use crate::auth::Claims;
use crate::authz::{self, AuthzError, Extension, ReadAccess};
use crate::protocol::ChannelError;
use crate::router::Access;

/// What one private channel's token may do; `None` = not decided yet.
#[derive(Debug, Clone)]
pub(super) struct PrivateAccess {
    pub ctx: authz::Context,
    pub read: ReadAccess,
    pub broadcast_write: Option<bool>,
    pub presence_write: Option<bool>,
}

impl PrivateAccess {
    pub fn new(ctx: authz::Context, read: ReadAccess) -> PrivateAccess {
        PrivateAccess {
            ctx,
            read,
            broadcast_write: None,
            presence_write: None,
        }
    }

    /// What the router may deliver to the channel.
    pub fn router_access(&self) -> Access {
        Access {
            broadcast: self.read.broadcast,
            presence: self.read.presence == Some(true),
        }
    }

    fn write(&self, extension: Extension) -> Option<bool> {
        match extension {
            Extension::Broadcast => self.broadcast_write,
            Extension::Presence => self.presence_write,
        }
    }

    fn set_write(&mut self, extension: Extension, allowed: bool) {
        match extension {
            Extension::Broadcast => self.broadcast_write = Some(allowed),
            Extension::Presence => self.presence_write = Some(allowed),
        }
    }
}

/// How a refreshed token's read permissions compare with the old ones.
fn refreshed_read(channel: &str, old: ReadAccess, new: ReadAccess) -> Result<(), ChannelError> {
    if !new.any() {
        return Err(ChannelError::ReadDenied {
            channel: channel.to_owned(),
        });
    }
    let lost = (old.broadcast && !new.broadcast)
        || (old.presence == Some(true) && new.presence != Some(true));
    if lost {
        return Err(ChannelError::ReadLost {
            channel: channel.to_owned(),
        });
    }
    Ok(())
}

fn refresh_error(channel: &str, e: AuthzError) -> ChannelError {
    match e {
        AuthzError::Policy(problem) => ChannelError::ReadCheckFailed {
            channel: channel.to_owned(),
            problem,
        },
        AuthzError::Unavailable(_) => ChannelError::DatabaseUnavailable,
    }
}

impl Session {
    /// Whether this channel may write `extension` (always on public channels). Decided
    /// once per token; a probe that fails counts as "no" and is logged.
    pub(super) async fn may_write(&mut self, topic: &str, extension: Extension) -> bool {
        let Some(ch) = self.channels.get(topic) else {
            return false;
        };
        let Some(private) = &ch.private else {
            return true;
        };
        if let Some(known) = private.write(extension) {
            return known;
        }
        let ctx = private.ctx.clone();
        let allowed = match self.svc.authz.write(&ctx, extension).await {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::warn!(conn_id = self.conn_id, topic, error = %e, extension = extension.as_str(), "write check failed");
                false
            }
        };
        if let Some(p) = self
            .channels
            .get_mut(topic)
            .and_then(|c| c.private.as_mut())
        {
            p.set_write(extension, allowed);
        }
        allowed
    }

    /// A first track on a private channel that joined without presence: presence read is
    /// decided now (Supabase does the same), so the channel receives presence only if its
    /// policies let it.
    pub(super) async fn decide_presence_read(&mut self, topic: &str) {
        let Some(ch) = self.channels.get(topic) else {
            return;
        };
        let Some(private) = &ch.private else {
            return;
        };
        if private.read.presence.is_some() {
            return;
        }
        let (ctx, key, member) = (private.ctx.clone(), ch.key.clone(), ch.member);
        let read = match self.svc.authz.read(&ctx, true).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(conn_id = self.conn_id, topic, error = %e, "presence read check failed");
                return;
            }
        };
        if let Some(p) = self
            .channels
            .get_mut(topic)
            .and_then(|c| c.private.as_mut())
        {
            p.read.presence = read.presence;
            self.svc.router.set_access(&key, member, p.router_access());
        }
    }

    /// A refreshed token on a private channel: read is decided again (and write forgotten);
    /// losing read ends the channel with the text the client surfaces.
    pub(super) async fn redecide(
        &mut self,
        topic: &str,
        claims: &Claims,
    ) -> Result<(), ChannelError> {
        let Some(ch) = self.channels.get(topic) else {
            return Ok(());
        };
        let Some(private) = &ch.private else {
            return Ok(());
        };
        let channel = channel_name(topic).to_owned();
        let ctx = authz::Context::new(&channel, claims, private.ctx.headers.clone());
        let old = private.read;
        let (key, member) = (ch.key.clone(), ch.member);
        let new = self
            .svc
            .authz
            .read(&ctx, old.presence.is_some())
            .await
            .map_err(|e| refresh_error(&channel, e))?;
        refreshed_read(&channel, old, new)?;
        if let Some(ch) = self.channels.get_mut(topic) {
            let access = PrivateAccess::new(ctx, new);
            self.svc
                .router
                .set_access(&key, member, access.router_access());
            ch.private = Some(access);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: ReadAccess = ReadAccess {
        broadcast: true,
        presence: Some(true),
    };

    #[test]
    fn a_refresh_that_loses_one_read_or_both_ends_the_channel_with_supabases_texts() {
        let only_presence = ReadAccess {
            broadcast: false,
            presence: Some(true),
        };
        let none = ReadAccess {
            broadcast: false,
            presence: Some(false),
        };
        assert_eq!(refreshed_read("room", BOTH, BOTH), Ok(()));
        assert_eq!(
            refreshed_read("room", BOTH, only_presence),
            Err(ChannelError::ReadLost {
                channel: "room".into()
            })
        );
        assert_eq!(
            refreshed_read("room", BOTH, none),
            Err(ChannelError::ReadDenied {
                channel: "room".into()
            })
        );
        assert_eq!(refreshed_read("room", only_presence, BOTH), Ok(()));
    }
}
