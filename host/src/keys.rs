//! API keys and scopes.
//!
//! A key is `ghk_` followed by 64 hex digits: 256 bits from the operating
//! system's CSPRNG. The gateway never stores a key, only `sha256:<hex>` of it.
//! A single fast hash is the right tool here (unlike for passwords): the input
//! is uniformly random with 256 bits of entropy, so there is nothing for a
//! dictionary or brute-force attack to grind through, and a slow KDF would only
//! cost time on every RPC.
//!
//! Hashes are compared in constant time, and [`KeyTable::find`] compares the
//! presented key's hash with *every* configured hash before answering, so the
//! time a lookup takes says nothing about which entry, if any, matched.

use std::fmt;

use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// The prefix of every key this gateway generates.
pub const KEY_PREFIX: &str = "ghk_";

/// What a key may do. `Admin` implies every other scope and sees every
/// tenant's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `sessions:open`: `OpenSession`, and `Call` (with `sessions:use`).
    SessionsOpen,
    /// `sessions:use`: `Invoke`, `InvokeBatch`, `StreamEvents`,
    /// `RenewLease`, `CloseSession`, `RestartSession`, `UpgradeSession`.
    SessionsUse,
    /// `sessions:read`: `GetSession`, `ListSessions`.
    SessionsRead,
    /// `backends:read`: `ListBackends`.
    BackendsRead,
    /// `admin`: everything, across tenants.
    Admin,
}

impl Scope {
    /// Every scope, in config order.
    pub const ALL: [Scope; 5] = [
        Scope::SessionsOpen,
        Scope::SessionsUse,
        Scope::SessionsRead,
        Scope::BackendsRead,
        Scope::Admin,
    ];

    /// The name used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SessionsOpen => "sessions:open",
            Scope::SessionsUse => "sessions:use",
            Scope::SessionsRead => "sessions:read",
            Scope::BackendsRead => "backends:read",
            Scope::Admin => "admin",
        }
    }

    /// Parses a scope name; the error lists the known names.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope {s:?} (known: {})", known.join(", "))
            })
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);

    /// Every scope but `admin`: what the anonymous caller of local
    /// development mode gets.
    pub fn all_but_admin() -> Self {
        Scope::ALL
            .into_iter()
            .filter(|s| *s != Scope::Admin)
            .collect()
    }

    /// Whether the set grants `scope` (`admin` grants every scope).
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// Whether `admin` is in the set.
    pub fn is_admin(self) -> bool {
        self.0 & Scope::Admin.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in config order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |s| self.0 & s.bit() != 0)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// The SHA-256 of an API key: what the config stores.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of a presented key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex digits>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not \"sha256:\" followed by 64 hex digits");
        let hex_digits = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }

    /// Constant-time equality: 1 when equal, 0 otherwise, after looking at
    /// every byte.
    pub fn ct_eq(&self, other: &KeyHash) -> u8 {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        let diff = std::hint::black_box(diff);
        // 1 if diff == 0, else 0, without a branch.
        (((u16::from(diff)).wrapping_sub(1) >> 8) & 1) as u8
    }

    /// A short label safe to log: the first 12 hex digits.
    pub fn short(&self) -> String {
        format!("sha256:{}", &hex::encode(self.0)[..12])
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.short())
    }
}

/// A new random key and its hash. The key is shown once and never stored.
pub fn generate() -> Result<(String, KeyHash), String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| format!("the operating system's random number generator failed: {e}"))?;
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    let hash = KeyHash::of(&key);
    Ok((key, hash))
}

/// Configured keys, each with a value the caller gets back on a match.
#[derive(Debug, Clone)]
pub struct KeyTable<T> {
    entries: Vec<(KeyHash, T)>,
}

impl<T> Default for KeyTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> KeyTable<T> {
    /// Every entry's value, in table order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// A table over `entries`.
    pub fn new(entries: Vec<(KeyHash, T)>) -> Self {
        Self { entries }
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry whose hash is the hash of `key`. Hashes the key once and
    /// compares it with every entry in constant time; the loop never stops
    /// early and selects the match without branching on it.
    pub fn find(&self, key: &str) -> Option<&T> {
        let presented = KeyHash::of(key);
        let mut found = 0usize; // index + 1 of the match; 0 for none
        for (i, (hash, _)) in self.entries.iter().enumerate() {
            let mask = 0usize.wrapping_sub(usize::from(hash.ct_eq(&presented)));
            found = std::hint::black_box((found & !mask) | ((i + 1) & mask));
        }
        found.checked_sub(1).map(|i| &self.entries[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_random_and_prefixed() {
        let (a, ha) = generate().unwrap();
        let (b, hb) = generate().unwrap();
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 64, "256 bits as hex");
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(KeyHash::of(&a), ha);
    }

    #[test]
    fn hashes_round_trip_and_bad_ones_are_refused() {
        let (_, h) = generate().unwrap();
        let text = h.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(KeyHash::parse(&text).unwrap(), h);
        assert!(KeyHash::parse("sha256:abc").is_err());
        assert!(KeyHash::parse(&text.replace("sha256:", "md5:")).is_err());
        assert!(KeyHash::parse(&format!("{text}00")).is_err());
        assert!(KeyHash::parse(&text.replace("sha256:", "sha256:zz")[..71]).is_err());
        // Known vector: sha256("abc").
        assert_eq!(
            KeyHash::of("abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_equality() {
        let a = KeyHash::of("a");
        let b = KeyHash::of("b");
        assert_eq!(a.ct_eq(&a), 1);
        assert_eq!(a.ct_eq(&b), 0);
        // Differing only in the last byte.
        let mut c = a;
        c.0[31] ^= 0x80;
        assert_eq!(a.ct_eq(&c), 0);
    }

    #[test]
    fn the_table_finds_exactly_the_matching_entry() {
        let keys: Vec<String> = (0..5).map(|_| generate().unwrap().0).collect();
        let table = KeyTable::new(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (KeyHash::of(k), i))
                .collect(),
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(table.find(k), Some(&i));
        }
        assert_eq!(table.find("ghk_nope"), None);
        assert_eq!(table.find(""), None);
        assert_eq!(KeyTable::<u8>::default().find(&keys[0]), None);
    }

    #[test]
    fn scopes_parse_and_admin_implies_all() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()).unwrap(), s);
        }
        let e = Scope::parse("sessions:write").unwrap_err();
        assert!(
            e.contains("sessions:write") && e.contains("sessions:open"),
            "{e}"
        );
        let read: Scopes = [Scope::SessionsRead].into_iter().collect();
        assert!(read.allows(Scope::SessionsRead));
        assert!(!read.allows(Scope::SessionsUse));
        assert!(!read.is_admin());
        let admin: Scopes = [Scope::Admin].into_iter().collect();
        for s in Scope::ALL {
            assert!(admin.allows(s), "{s}");
        }
        let local = Scopes::all_but_admin();
        assert!(!local.is_admin() && local.allows(Scope::SessionsOpen));
        assert_eq!(read.to_string(), "sessions:read");
    }
}
