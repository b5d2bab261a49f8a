//! What `gatehouse serve` refuses before it listens, and what `config
//! check` and a reload check the same way: an exposure the config does not
//! allow, and certificate files that do not load.

use crate::api::Authenticator;
use crate::config::Config;
use crate::transport::{TlsError, tls};

/// Why a config may not be served.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The listen address and the credentials do not go together.
    #[error("{0}")]
    Exposure(String),
    /// A port's certificate files cannot be used.
    #[error("{key}: {source}")]
    Tls {
        /// The config table, `server.tls` or `server.http_tls`.
        key: &'static str,
        /// Why.
        source: TlsError,
    },
}

/// Every check: the exposure, then each port's certificate files.
pub fn check(config: &Config) -> Result<(), PreflightError> {
    check_exposure(config, &Authenticator::from_tenants(&config.tenants))?;
    let server = &config.server;
    if let Some(files) = &server.tls {
        tls::check(files).map_err(|source| PreflightError::Tls {
            key: "server.tls",
            source,
        })?;
    }
    if let Some(files) = &server.http_tls
        && server.tls.as_ref() != Some(files)
    {
        tls::check(files).map_err(|source| PreflightError::Tls {
            key: "server.http_tls",
            source,
        })?;
    }
    Ok(())
}

/// Local development mode (no credentials) serves loopback only; with
/// credentials, a public address needs TLS, or `allow_plaintext` for a
/// TLS-terminating proxy in front: keys must not cross a network in the
/// clear.
pub fn check_exposure(config: &Config, auth: &Authenticator) -> Result<(), PreflightError> {
    let server = &config.server;
    let public = !server.listen.ip().is_loopback();
    if auth.is_local() && public {
        return Err(PreflightError::Exposure(format!(
            "refusing to listen on {} without API keys: local development mode only serves loopback",
            server.listen
        )));
    }
    if public && server.tls.is_none() && !server.allow_plaintext {
        return Err(PreflightError::Exposure(format!(
            "refusing to serve API keys in plaintext on {}: configure [server.tls] (cert, key), or set server.allow_plaintext = true if a TLS-terminating proxy is in front",
            server.listen
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Keys cross a public network only over TLS, or when the operator says
    /// a proxy in front terminates it.
    #[test]
    fn exposure_rules() {
        let (_, hash) = crate::keys::generate().unwrap();
        let keys = format!(
            "[[tenants]]\nname = \"a\"\n[[tenants.keys]]\nhash = \"{hash}\"\nscopes = [\"admin\"]\n"
        );
        let check = |server: &str, tenants: &str| {
            let config =
                Config::parse(&format!("[server]\n{server}\n{tenants}"), Path::new("/x")).unwrap();
            check_exposure(&config, &Authenticator::from_tenants(&config.tenants))
                .map_err(|e| e.to_string())
        };
        let tls = "[server.tls]\ncert = \"c\"\nkey = \"k\"";
        let public = "listen = \"0.0.0.0:50051\"";
        check("", "").unwrap();
        check("", &keys).unwrap();
        let e = check(public, "").unwrap_err();
        assert!(e.contains("local development mode"), "{e}");
        let e = check(&format!("{public}\n{tls}"), "").unwrap_err();
        assert!(
            e.contains("local development mode"),
            "TLS does not make anonymous calls safe: {e}"
        );
        let e = check(public, &keys).unwrap_err();
        assert!(
            e.contains("[server.tls]") && e.contains("server.allow_plaintext = true"),
            "{e}"
        );
        check(&format!("{public}\nallow_plaintext = true"), &keys).unwrap();
        check(&format!("{public}\n{tls}"), &keys).unwrap();
        check("listen = \"[::1]:50051\"", &keys).unwrap();
    }
}
