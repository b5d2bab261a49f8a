//! Console sign-ins: a random token in an `HttpOnly`, `SameSite=Strict`
//! cookie names a sign-in held only in the gateway's memory, with its own
//! CSRF token and an absolute expiry. The admin key stays on the server
//! side of the sign-in and is checked again on every request, so a revoked
//! or expired key ends its console sign-ins with the next page load.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::TryRngCore;

/// The cookie naming a sign-in.
pub const SESSION_COOKIE: &str = "gatehouse_console";
/// The cookie holding the sign-in form's CSRF token (double submit: the
/// form must carry the same value).
pub const LOGIN_CSRF_COOKIE: &str = "gatehouse_console_login";
/// How long a sign-in lasts, however active.
pub const SIGN_IN_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Sign-ins held at most; the oldest goes first beyond it.
const MAX_SIGN_INS: usize = 1024;

/// One signed-in browser.
#[derive(Clone)]
pub struct SignIn {
    /// The admin key it signed in with, checked again on every request.
    pub key: String,
    /// The token every form of this sign-in carries.
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
}

/// Every live sign-in, by cookie token.
#[derive(Default)]
pub struct SignIns {
    by_token: Mutex<HashMap<String, SignIn>>,
}

impl SignIns {
    /// Starts a sign-in for `key`; returns its cookie token.
    pub fn start(&self, key: String) -> Option<String> {
        let token = random_token()?;
        let sign_in = SignIn {
            key,
            csrf: random_token()?,
            expires: Instant::now() + SIGN_IN_LIFETIME,
        };
        let mut map = self.by_token.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SIGN_INS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(t, _)| t.clone())
        {
            map.remove(&oldest);
        }
        map.insert(token.clone(), sign_in);
        Some(token)
    }

    /// The live sign-in of `token`.
    pub fn get(&self, token: &str) -> Option<SignIn> {
        let mut map = self.by_token.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(token) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(token);
                None
            }
            None => None,
        }
    }

    /// Ends the sign-in of `token`.
    pub fn end(&self, token: &str) {
        self.by_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }
}

/// 256 random bits as hex.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, scoped to
/// `/console`, `Secure` over TLS; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_ins_start_find_and_end() {
        let s = SignIns::default();
        let t = s.start("ghk_x".into()).unwrap();
        let got = s.get(&t).unwrap();
        assert_eq!(got.key, "ghk_x");
        assert_eq!(got.csrf.len(), 64);
        assert!(s.get("nope").is_none());
        s.end(&t);
        assert!(s.get(&t).is_none());
    }

    #[test]
    fn cookies_and_tokens() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; gatehouse_console=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("a", "ab"));
        let c = set_cookie("n", "v", Duration::from_secs(5), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
    }
}
