//! The REST broadcast rate: messages per second per token and per client address (an
//! IPv6 address counts by its /64, which one host usually holds whole), each a token
//! bucket whose burst is one second's worth. A request's messages count against both.
//! Supabase's answers: 429 `You have exceeded your rate limit` (with `Retry-After`), and
//! for a batch larger than a bucket ever holds, 429 `Too many messages to broadcast,
//! please reduce the batch size`.

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Stale buckets (full again, so indistinguishable from new ones) are dropped every this
/// many checks, so keys cannot pile up.
const PRUNE_EVERY: u64 = 1024;

/// Why a REST broadcast was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the rate; try again after this long.
    Rate { retry_after: Duration },
    /// More messages than a bucket ever holds.
    Batch,
}

/// The per-token and per-address buckets; shared by every REST request.
pub struct RestLimits {
    per_token: DefaultKeyedRateLimiter<u64>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    /// Hashes tokens into keys (random per process), so no token text is kept.
    hasher: std::hash::RandomState,
    /// Whether the caller's address comes from `X-Forwarded-For`.
    trust_forwarded: bool,
    checks: AtomicU64,
}

fn quota(per_second: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl RestLimits {
    pub fn new(per_token: u32, per_address: u32, trust_forwarded: bool) -> RestLimits {
        RestLimits {
            per_token: RateLimiter::keyed(quota(per_token)),
            per_address: RateLimiter::keyed(quota(per_address)),
            hasher: std::hash::RandomState::new(),
            trust_forwarded,
            checks: AtomicU64::new(0),
        }
    }

    /// The caller's address: the TCP peer, or with `trust_x_forwarded_for` the last
    /// `X-Forwarded-For` entry (the one the proxy in front of the hub appended).
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.trust_forwarded {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|last| last.trim().parse().ok());
        forwarded.or(peer)
    }

    /// Counts `messages` against `token`'s and `address`'s buckets.
    pub fn check(
        &self,
        token: &str,
        address: Option<IpAddr>,
        messages: usize,
    ) -> Result<(), Refused> {
        self.prune();
        let Some(n) = u32::try_from(messages).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        if let Some(ip) = address {
            outcome(&self.per_address, &address_key(ip), n)?;
        }
        outcome(&self.per_token, &self.hasher.hash_one(token), n)
    }

    fn prune(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.per_token.retain_recent();
            self.per_address.retain_recent();
        }
    }
}

fn outcome<K>(limiter: &DefaultKeyedRateLimiter<K>, key: &K, n: NonZeroU32) -> Result<(), Refused>
where
    K: std::hash::Hash + Eq + Clone,
{
    match limiter.check_key_n(key, n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(Refused::Rate {
            retry_after: not_until.wait_time_from(limiter.clock().now()),
        }),
        Err(_) => Err(Refused::Batch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tokens_and_addresses_each_get_a_bucket_of_one_seconds_worth() {
        let limits = RestLimits::new(10, 15, false);
        assert_eq!(limits.check("a", Some(ip("10.0.0.1")), 10), Ok(()));
        assert!(matches!(
            limits.check("a", Some(ip("10.0.0.2")), 1),
            Err(Refused::Rate { .. })
        ));
        // Another token from the same address: the address has 5 left.
        assert_eq!(limits.check("b", Some(ip("10.0.0.1")), 5), Ok(()));
        assert!(matches!(
            limits.check("c", Some(ip("10.0.0.1")), 1),
            Err(Refused::Rate { .. })
        ));
        assert_eq!(limits.check("d", None, 11), Err(Refused::Batch));
        assert_eq!(limits.check("d", None, 0), Ok(()));
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn the_forwarded_address_is_the_last_entry_and_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        headers.append("x-forwarded-for", "3.3.3.3".parse().unwrap());
        let peer = Some(ip("127.0.0.1"));
        let trusting = RestLimits::new(1, 1, true);
        assert_eq!(trusting.client_address(peer, &headers), Some(ip("3.3.3.3")));
        let plain = RestLimits::new(1, 1, false);
        assert_eq!(plain.client_address(peer, &headers), peer);
        assert_eq!(trusting.client_address(peer, &HeaderMap::new()), peer);
    }
}
