//! One private channel's decisions, cached per (channel, token) the way Supabase keeps
//! them: read decided at join (broadcast, and presence when enabled), write decided at the
//! first broadcast or track and remembered, presence read decided at a first track when it
//! was not at join, everything decided again for a refreshed token.

use super::{Authz, AuthzError, Context, Extension, ReadAccess};

/// What one private channel's token may do; `None` = not decided yet.
#[derive(Debug, Clone)]
pub struct ChannelAccess {
    ctx: Context,
    read: ReadAccess,
    broadcast_write: Option<bool>,
    presence_write: Option<bool>,
    /// A write check that failed is not made again before this (each costs a
    /// transaction on the shared pool; a policy that always raises would otherwise cost
    /// one per message).
    write_failed_until: Option<std::time::Instant>,
}

/// How long a failed write check stands before it is made again.
const WRITE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a refreshed token may no longer use the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// It may read neither broadcast nor presence.
    ReadDenied,
    /// It lost one of the read permissions the channel had.
    ReadLost,
    /// The decision failed.
    Failed(AuthzError),
}

impl ChannelAccess {
    /// The join's decision: read on broadcast, and on presence when `with_presence`.
    pub async fn decide(
        authz: &Authz,
        ctx: Context,
        with_presence: bool,
    ) -> Result<ChannelAccess, AuthzError> {
        let read = authz.read(&ctx, with_presence).await?;
        Ok(ChannelAccess {
            ctx,
            read,
            broadcast_write: None,
            presence_write: None,
            write_failed_until: None,
        })
    }

    pub fn read(&self) -> ReadAccess {
        self.read
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Write permission for `extension`, probed once and then remembered. A probe that
    /// fails counts as "no" (Supabase drops the message too) and is returned for logging.
    pub async fn may_write(
        &mut self,
        authz: &Authz,
        extension: Extension,
    ) -> (bool, Option<AuthzError>) {
        let slot = match extension {
            Extension::Broadcast => &mut self.broadcast_write,
            Extension::Presence => &mut self.presence_write,
        };
        if let Some(known) = *slot {
            return (known, None);
        }
        if self
            .write_failed_until
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            return (false, None);
        }
        // Only an answer is kept: a check that failed (a policy that raised, the database
        // out of reach) is made again on a send after `WRITE_RETRY`, as Supabase makes it
        // again on the next one.
        match authz.write(&self.ctx, extension).await {
            Ok(allowed) => {
                *slot = Some(allowed);
                (allowed, None)
            }
            Err(e) => {
                self.write_failed_until = Some(std::time::Instant::now() + WRITE_RETRY);
                (false, Some(e))
            }
        }
    }

    /// Decides presence read if the join did not (a first track). True when it changed.
    pub async fn decide_presence_read(&mut self, authz: &Authz) -> Result<bool, AuthzError> {
        if self.read.presence.is_some() {
            return Ok(false);
        }
        self.read.presence = authz.read(&self.ctx, true).await?.presence;
        Ok(true)
    }

    /// The decisions for a refreshed token with `ctx`: read decided again (presence when
    /// it was decided before), write forgotten. Refused when nothing is readable any more
    /// or a read permission was lost.
    pub async fn refreshed(&self, authz: &Authz, ctx: Context) -> Result<ChannelAccess, Refused> {
        let read = authz
            .read(&ctx, self.read.presence.is_some())
            .await
            .map_err(Refused::Failed)?;
        compare(self.read, read)?;
        Ok(ChannelAccess {
            ctx,
            read,
            broadcast_write: None,
            presence_write: None,
            write_failed_until: None,
        })
    }
}

/// How a refreshed token's read permissions compare with the old ones.
fn compare(old: ReadAccess, new: ReadAccess) -> Result<(), Refused> {
    if !new.any() {
        return Err(Refused::ReadDenied);
    }
    let lost = (old.broadcast && !new.broadcast)
        || (old.presence == Some(true) && new.presence != Some(true));
    if lost {
        return Err(Refused::ReadLost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: ReadAccess = ReadAccess {
        broadcast: true,
        presence: Some(true),
    };

    #[test]
    fn a_refresh_that_loses_one_read_or_both_is_refused() {
        let only_presence = ReadAccess {
            broadcast: false,
            presence: Some(true),
        };
        let none = ReadAccess {
            broadcast: false,
            presence: Some(false),
        };
        assert_eq!(compare(BOTH, BOTH), Ok(()));
        assert_eq!(compare(BOTH, only_presence), Err(Refused::ReadLost));
        assert_eq!(compare(BOTH, none), Err(Refused::ReadDenied));
        assert_eq!(compare(only_presence, BOTH), Ok(()));
    }

    #[tokio::test]
    async fn write_is_probed_once_per_token_and_extension() {
        // Without a database only service_role may write; the answer is remembered.
        let authz = Authz::new(None);
        let ctx = Context {
            topic: "room".into(),
            role: "service_role".into(),
            claims: "{}".into(),
            sub: None,
            headers: "{}".into(),
        };
        let mut access = ChannelAccess::decide(&authz, ctx, false).await.unwrap();
        assert_eq!(access.read().presence, None);
        assert_eq!(
            access.may_write(&authz, Extension::Broadcast).await,
            (true, None)
        );
        assert_eq!(access.broadcast_write, Some(true));
        assert_eq!(access.presence_write, None);
        assert!(access.decide_presence_read(&authz).await.unwrap());
        assert_eq!(access.read().presence, Some(true));
    }
}
