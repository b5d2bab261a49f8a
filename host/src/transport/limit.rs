//! How many connections a port holds at once: `server.max_connections` in
//! all, `server.max_connections_per_address` from one client address (an
//! IPv6 client by its /64, which one host usually holds whole), and
//! `server.health_connections` more beyond the cap that serve only health
//! checks, so a full port still answers its probes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;

/// A port's connection caps; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `server.max_connections`.
    pub max: usize,
    /// `server.max_connections_per_address`; `None` for no cap.
    pub per_address: Option<usize>,
    /// `server.health_connections`.
    pub health: usize,
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `server.max_connections` (and the health reserve) are in use.
    Full,
    /// Its address holds `server.max_connections_per_address`.
    Address,
}

/// The key an address is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AddressKey(IpAddr);

impl AddressKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Self(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
            v4 => Self(v4),
        }
    }
}

#[derive(Debug)]
struct Counts {
    open: AtomicUsize,
    health: AtomicUsize,
    by_address: Mutex<HashMap<AddressKey, usize>>,
}

/// A port's connection counts and caps. Each accepted connection holds a
/// [`Permit`] for as long as it is open.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    counts: Arc<Counts>,
    caps: Caps,
    gauge: Gauge,
}

/// One open connection's place under the caps; given back on drop.
#[derive(Debug)]
pub struct Permit {
    counts: Arc<Counts>,
    address: Option<AddressKey>,
    reserved: bool,
    gauge: Gauge,
}

impl Permit {
    /// Whether the connection came in on the health reserve.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }
}

/// Takes one of `max` places in `count`.
fn take(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl ConnectionLimit {
    /// The caps `caps`, with open connections counted into `gauge`.
    pub fn new(caps: Caps, gauge: Gauge) -> Self {
        Self {
            counts: Arc::new(Counts {
                open: AtomicUsize::new(0),
                health: AtomicUsize::new(0),
                by_address: Mutex::new(HashMap::new()),
            }),
            caps,
            gauge,
        }
    }

    /// A permit for a connection from `remote`, or why not.
    pub fn try_acquire(&self, remote: Option<IpAddr>) -> Result<Permit, Refused> {
        let counted = remote
            .map(AddressKey::of)
            .filter(|_| self.caps.per_address.is_some());
        if let (Some(key), Some(cap)) = (counted, self.caps.per_address) {
            let mut by = self
                .counts
                .by_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = by.entry(key).or_default();
            if *n >= cap {
                return Err(Refused::Address);
            }
            *n += 1;
        }
        let reserved = if take(&self.counts.open, self.caps.max) {
            false
        } else if take(&self.counts.health, self.caps.health) {
            true
        } else {
            release_address(&self.counts, counted);
            return Err(Refused::Full);
        };
        self.gauge.inc();
        Ok(Permit {
            counts: Arc::clone(&self.counts),
            address: counted,
            reserved,
            gauge: self.gauge.clone(),
        })
    }

    /// Connections open now, the health reserve's included.
    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::Acquire) + self.counts.health.load(Ordering::Acquire)
    }
}

fn release_address(counts: &Counts, address: Option<AddressKey>) {
    let Some(key) = address else { return };
    let mut by = counts
        .by_address
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(n) = by.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            by.remove(&key);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let count = if self.reserved {
            &self.counts.health
        } else {
            &self.counts.open
        };
        count.fetch_sub(1, Ordering::AcqRel);
        release_address(&self.counts, self.address);
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn caps(max: usize, per_address: Option<usize>, health: usize) -> Caps {
        Caps {
            max,
            per_address,
            health,
        }
    }

    #[test]
    fn permits_are_capped_and_given_back() {
        let gauge = Gauge::default();
        let limit = ConnectionLimit::new(caps(2, None, 0), gauge.clone());
        let a = limit.try_acquire(None).unwrap();
        let b = limit.try_acquire(None).unwrap();
        assert_eq!(limit.try_acquire(None).unwrap_err(), Refused::Full);
        assert_eq!((limit.open(), gauge.get()), (2, 2));
        drop(a);
        let c = limit.try_acquire(None).unwrap();
        drop((b, c));
        assert_eq!((limit.open(), gauge.get()), (0, 0));
    }

    #[test]
    fn one_address_cannot_take_the_whole_port() {
        let limit = ConnectionLimit::new(caps(10, Some(2), 0), Gauge::default());
        let a = limit.try_acquire(ip("127.0.0.2")).unwrap();
        let _b = limit.try_acquire(ip("127.0.0.2")).unwrap();
        assert_eq!(
            limit.try_acquire(ip("127.0.0.2")).unwrap_err(),
            Refused::Address
        );
        // The same address written as v4-mapped v6 is the same client.
        assert_eq!(
            limit.try_acquire(ip("::ffff:127.0.0.2")).unwrap_err(),
            Refused::Address
        );
        let _c = limit.try_acquire(ip("127.0.0.1")).unwrap();
        drop(a);
        let _d = limit.try_acquire(ip("127.0.0.2")).unwrap();
        // An IPv6 client is counted by its /64.
        let _e = limit.try_acquire(ip("2001:db8::1")).unwrap();
        let _f = limit.try_acquire(ip("2001:db8::2")).unwrap();
        assert_eq!(
            limit.try_acquire(ip("2001:db8::3")).unwrap_err(),
            Refused::Address
        );
        let _g = limit.try_acquire(ip("2001:db8:0:1::1")).unwrap();
    }

    #[test]
    fn a_full_port_keeps_room_for_health_checks() {
        let limit = ConnectionLimit::new(caps(1, Some(5), 1), Gauge::default());
        let a = limit.try_acquire(ip("127.0.0.9")).unwrap();
        assert!(!a.is_reserved());
        let h = limit.try_acquire(ip("127.0.0.9")).unwrap();
        assert!(h.is_reserved());
        assert_eq!(
            limit.try_acquire(ip("127.0.0.9")).unwrap_err(),
            Refused::Full
        );
        assert_eq!(limit.open(), 2);
        drop(h);
        // A refusal gave back the address's count: two more fit it.
        let _h = limit.try_acquire(ip("127.0.0.9")).unwrap();
        drop(a);
        let again = limit.try_acquire(ip("127.0.0.9")).unwrap();
        assert!(!again.is_reserved());
        assert_eq!(limit.open(), 2);
    }
}
