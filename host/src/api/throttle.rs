//! Failed authentications, throttled per peer address.
//!
//! Every peer address has a bucket of failures: `server.auth_failures_burst`
//! of them at once, then `server.max_auth_failures_per_sec`. A call refused
//! for its credentials takes a token; while a peer's bucket is empty its
//! calls are refused `UNAUTHENTICATED` without their key being looked at,
//! so guessing keys from one address gets no more tries than the rate.
//! Other addresses are not touched: their good keys answer as fast as ever.
//!
//! Failures are logged with counts, never a key: an address's first
//! failure, the moment it is throttled, then at most once per
//! [`LOG_EVERY`]. IPv6 addresses count by their /64 (one host
//! usually holds the whole prefix). The table is bounded ([`MAX_PEERS`]):
//! addresses whose bucket is full again are dropped first, as they say
//! nothing a new entry would not; then the longest quiet.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::auth_error::AuthError;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::rate::{Bucket, Rate};

/// How often failures from one address are logged, at most.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Addresses tracked at once.
pub const MAX_PEERS: usize = 10_000;

/// A peer as the throttle counts it: an IPv4 address, an IPv6 /64, or
/// `None` for a transport that gives no address. Such calls are counted and
/// logged but never refused: sharing one budget, one bad client would shut
/// out all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PeerKey(Option<IpAddr>);

impl PeerKey {
    fn of(peer: Option<IpAddr>) -> Self {
        Self(peer.map(|ip| match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    IpAddr::V6(Ipv6Addr::from(segments))
                }
            },
        }))
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("an unknown address"),
            Some(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Some(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
        }
    }
}

#[derive(Debug)]
struct Peer {
    bucket: Bucket,
    seen: Instant,
    logged: Option<Instant>,
    /// Since the last log line.
    failed: u64,
    /// Refused unchecked since the last log line.
    refused: u64,
    /// Whether being throttled was logged since the bucket was last full.
    announced: bool,
    /// The last failure, as `Method: reason`.
    last: String,
}

/// What to log, taken under the lock and written after it.
struct Report {
    peer: PeerKey,
    failed: u64,
    refused: u64,
    last: String,
}

impl Report {
    fn log(self) {
        let Report {
            peer,
            failed,
            refused,
            last,
        } = self;
        if refused == 0 {
            tracing::info!(%peer, failed, %last, "authentication failed");
        } else {
            tracing::warn!(
                %peer,
                failed,
                refused,
                %last,
                "authentication failing repeatedly: calls from this address are refused unchecked until it slows down (server.max_auth_failures_per_sec)"
            );
        }
    }
}

/// The per-address throttle; see the module docs.
pub struct FailureThrottle {
    rate: Rate,
    clock: Arc<dyn Clock>,
    capacity: usize,
    peers: Mutex<HashMap<PeerKey, Peer>>,
    failures: Counter,
    throttled: Counter,
}

impl fmt::Debug for FailureThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureThrottle")
            .field("rate", &self.rate)
            .field("tracked", &self.peers().len())
            .finish_non_exhaustive()
    }
}

impl FailureThrottle {
    /// A throttle of `rate` failures per address, counting into `metrics`.
    pub fn new(rate: Rate, clock: Arc<dyn Clock>, metrics: &Metrics) -> Self {
        Self::with_capacity(rate, clock, metrics, MAX_PEERS)
    }

    fn with_capacity(
        rate: Rate,
        clock: Arc<dyn Clock>,
        metrics: &Metrics,
        capacity: usize,
    ) -> Self {
        Self {
            rate,
            clock,
            capacity: capacity.max(1),
            peers: Mutex::new(HashMap::new()),
            failures: metrics.auth_failures.clone(),
            throttled: metrics.auth_throttled.clone(),
        }
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<PeerKey, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call from `peer` may have its credentials checked; if not,
    /// how long until it may. A refusal is counted (and logged, at most once
    /// per [`LOG_EVERY`]).
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<(), Duration> {
        if peer.is_none() {
            return Ok(());
        }
        let key = PeerKey::of(peer);
        let now = self.clock.now();
        let (wait, report) = {
            let mut peers = self.peers();
            let Some(p) = peers.get_mut(&key) else {
                return Ok(());
            };
            p.seen = now;
            let Err(wait) = p.bucket.wait(self.rate, now) else {
                if p.announced && p.bucket.is_full(self.rate, now) {
                    p.announced = false;
                }
                return Ok(());
            };
            p.refused += 1;
            // Being throttled is news once per episode, whatever the interval.
            let force = !std::mem::replace(&mut p.announced, true);
            (wait, log_due(key, p, now, force))
        };
        self.throttled.inc();
        if let Some(r) = report {
            r.log();
        }
        Err(wait)
    }

    /// Records a call from `peer` refused for its credentials.
    pub fn failed(&self, peer: Option<IpAddr>, method: &str, error: &AuthError) {
        self.failures.inc();
        let key = PeerKey::of(peer);
        let now = self.clock.now();
        let report = {
            let mut peers = self.peers();
            if !peers.contains_key(&key) && peers.len() >= self.capacity {
                self.make_room(&mut peers, now);
            }
            let p = peers.entry(key).or_insert_with(|| Peer {
                bucket: Bucket::full(self.rate, now),
                seen: now,
                logged: None,
                failed: 0,
                refused: 0,
                announced: false,
                last: String::new(),
            });
            p.bucket.drain_one(self.rate, now);
            p.seen = now;
            p.failed += 1;
            p.last = format!("{method}: {error}");
            log_due(key, p, now, false)
        };
        if let Some(r) = report {
            r.log();
        }
    }

    /// Drops the addresses whose bucket is full again; if that is not
    /// enough, the tenth that has been quiet longest.
    fn make_room(&self, peers: &mut HashMap<PeerKey, Peer>, now: Instant) {
        peers.retain(|_, p| !p.bucket.is_full(self.rate, now));
        if peers.len() < self.capacity {
            return;
        }
        let mut seen: Vec<Instant> = peers.values().map(|p| p.seen).collect();
        let nth = (seen.len() / 10).min(seen.len() - 1);
        let (_, cut, _) = seen.select_nth_unstable(nth);
        let cut = *cut;
        peers.retain(|_, p| p.seen > cut);
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.peers().len()
    }
}

/// A log line for `p` if `force`d or if its last one is [`LOG_EVERY`] old
/// (or there was none), resetting its counts.
fn log_due(key: PeerKey, p: &mut Peer, now: Instant, force: bool) -> Option<Report> {
    if !force
        && p.logged
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY)
    {
        return None;
    }
    p.logged = Some(now);
    Some(Report {
        peer: key,
        failed: std::mem::take(&mut p.failed),
        refused: std::mem::take(&mut p.refused),
        last: p.last.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::clock::ManualClock;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn throttle(per_sec: f64, burst: u32) -> (FailureThrottle, Arc<ManualClock>, Arc<Metrics>) {
        let clock = Arc::new(ManualClock::new());
        let metrics = Arc::new(Metrics::new());
        let t = FailureThrottle::new(
            Rate::new(per_sec, Some(burst)).unwrap(),
            Arc::clone(&clock) as Arc<dyn Clock>,
            &metrics,
        );
        (t, clock, metrics)
    }

    fn fail(t: &FailureThrottle, peer: Option<IpAddr>) {
        t.failed(peer, "ListBackends", &AuthError::UnknownKey);
    }

    #[test]
    fn a_burst_of_failures_then_the_address_is_refused_unchecked() {
        let (t, clock, metrics) = throttle(1.0, 3);
        for _ in 0..3 {
            t.admit(ip(1)).unwrap();
            fail(&t, ip(1));
        }
        assert_eq!(t.admit(ip(1)), Err(Duration::from_secs(1)));
        assert!(t.admit(ip(1)).is_err());
        // Other addresses are untouched.
        t.admit(ip(2)).unwrap();
        // Without an address there is nobody to throttle, only to count.
        for _ in 0..10 {
            t.admit(None).unwrap();
            fail(&t, None);
        }
        assert_eq!(metrics.auth_failures.get(), 13);
        assert_eq!(metrics.auth_throttled.get(), 2);
        // One more try a second later; failing it shuts the door again.
        clock.advance(Duration::from_secs(1));
        t.admit(ip(1)).unwrap();
        fail(&t, ip(1));
        assert!(t.admit(ip(1)).is_err());
        // A quiet address gets its whole burst back.
        clock.advance(Duration::from_secs(3));
        for _ in 0..3 {
            t.admit(ip(1)).unwrap();
            fail(&t, ip(1));
        }
        assert!(t.admit(ip(1)).is_err());
    }

    #[test]
    fn an_ipv6_prefix_counts_as_one_address() {
        let (t, _clock, _) = throttle(1.0, 2);
        let host = |n: u16| Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, n, n, n, n)));
        fail(&t, host(1));
        fail(&t, host(2));
        assert!(t.admit(host(3)).is_err());
        let other = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1)));
        t.admit(other).unwrap();
        // An IPv4-mapped address is its IPv4 address.
        fail(&t, ip(9));
        fail(
            &t,
            Some(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped())),
        );
        assert!(t.admit(ip(9)).is_err());
        assert_eq!(PeerKey::of(host(7)).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn logs_once_per_interval_with_counts() {
        let (t, clock, _) = throttle(1.0, 1);
        let key = PeerKey::of(ip(1));
        let mut p = Peer {
            bucket: Bucket::full(t.rate, clock.now()),
            seen: clock.now(),
            logged: None,
            failed: 1,
            refused: 0,
            announced: false,
            last: "ListBackends: unknown API key".into(),
        };
        // The first failure is logged at once.
        let r = log_due(key, &mut p, clock.now(), false).unwrap();
        assert_eq!((r.failed, r.refused), (1, 0));
        p.failed = 5;
        p.refused = 40;
        clock.advance(LOG_EVERY / 2);
        assert!(log_due(key, &mut p, clock.now(), false).is_none());
        clock.advance(LOG_EVERY / 2);
        let r = log_due(key, &mut p, clock.now(), false).unwrap();
        assert_eq!((r.failed, r.refused), (5, 40));
        assert_eq!((p.failed, p.refused), (0, 0));
        // Forced (the address was just throttled) it comes at once.
        p.failed = 2;
        assert_eq!(log_due(key, &mut p, clock.now(), true).unwrap().failed, 2);
    }

    #[test]
    fn the_table_is_bounded_and_drops_recovered_addresses_first() {
        let clock = Arc::new(ManualClock::new());
        let metrics = Metrics::new();
        let t = FailureThrottle::with_capacity(
            Rate::new(1.0, Some(2)).unwrap(),
            Arc::clone(&clock) as Arc<dyn Clock>,
            &metrics,
            10,
        );
        // Address 1 is shut out; 2..=10 failed once, long ago.
        fail(&t, ip(1));
        fail(&t, ip(1));
        for n in 2..=10 {
            fail(&t, ip(n));
        }
        clock.advance(Duration::from_millis(1500));
        fail(&t, ip(1));
        fail(&t, ip(1));
        assert_eq!(t.tracked(), 10);
        // A new address makes room by dropping the recovered ones; address
        // 1 is still refused.
        fail(&t, ip(11));
        assert_eq!(t.tracked(), 2);
        assert!(t.admit(ip(1)).is_err());
        // A table full of active addresses drops the quietest.
        for n in 20..40 {
            clock.advance(Duration::from_millis(1));
            fail(&t, ip(n));
            fail(&t, ip(n));
            assert!(t.tracked() <= 10);
        }
        assert!(t.admit(ip(39)).is_err(), "the newest address is kept");
    }
}
