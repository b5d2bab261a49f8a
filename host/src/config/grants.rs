//! `[backends.grants]`: what a wasm plugin's sandbox opens (environment,
//! preopened directories, TCP destinations); for a native worker, only
//! `env` applies. Nothing is granted by default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, invalid};

/// What a wasm plugin's sandbox opens. The default opens nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the plugin sees.
    pub env: BTreeMap<String, String>,
    /// Host directories the plugin may use.
    pub preopens: Vec<Preopen>,
    /// TCP destinations the plugin may connect to.
    pub network: Vec<NetRule>,
}

/// One preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Whether the plugin may write.
    pub writable: bool,
}

/// One allowed TCP destination: `IP:PORT`, either part may be `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRule {
    /// The address, or any.
    pub ip: Option<std::net::IpAddr>,
    /// The port, or any.
    pub port: Option<u16>,
}

impl NetRule {
    /// Parses `127.0.0.1:8080`, `[::1]:443`, `*:80`, `10.0.0.1:*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not IP:PORT (either may be *)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match host {
            "*" => None,
            h => Some(h.parse().map_err(|_| bad())?),
        };
        let port = match port {
            "*" => None,
            p => Some(p.parse().map_err(|_| bad())?),
        };
        Ok(Self { ip, port })
    }

    /// Whether `addr` matches.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.ip.is_none_or(|ip| ip == addr.ip()) && self.port.is_none_or(|p| p == addr.port())
    }
}

// ---- the file format -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantsFile {
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) preopens: Vec<PreopenFile>,
    #[serde(default)]
    pub(super) network: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PreopenFile {
    host: PathBuf,
    guest: String,
    #[serde(default)]
    mode: PreopenMode,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PreopenMode {
    #[default]
    Ro,
    Rw,
}

impl GrantsFile {
    /// The grants written at `key`; preopens are resolved against `base`.
    pub(super) fn resolve(self, key: &str, base: &Path) -> Result<Grants, ConfigError> {
        let mut preopens = Vec::with_capacity(self.preopens.len());
        for (i, p) in self.preopens.into_iter().enumerate() {
            let host = base.join(&p.host);
            if !host.is_dir() {
                return Err(invalid(
                    format!("{key}.preopens[{i}].host"),
                    format!("{} is not a directory", host.display()),
                ));
            }
            if p.guest.is_empty() {
                return Err(invalid(
                    format!("{key}.preopens[{i}].guest"),
                    "must not be empty",
                ));
            }
            preopens.push(Preopen {
                host,
                guest: p.guest,
                writable: p.mode == PreopenMode::Rw,
            });
        }
        let network = self
            .network
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                NetRule::parse(rule).map_err(|m| invalid(format!("{key}.network[{i}]"), m))
            })
            .collect::<Result<_, _>>()?;
        Ok(Grants {
            env: self.env,
            preopens,
            network,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn grants_are_parsed_and_checked() {
        let dir = std::env::temp_dir();
        let c = parse(&format!(
            "[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.grants]\nenv = {{ A = \"1\" }}\nnetwork = [\"127.0.0.1:80\", \"*:443\", \"[::1]:*\"]\n[[backends.grants.preopens]]\nhost = {:?}\nguest = \"/tmp\"\nmode = \"rw\"\n",
            dir.display().to_string()
        ))
        .unwrap();
        let g = &c.backends[0].grants;
        assert_eq!(g.env.get("A").map(String::as_str), Some("1"));
        assert!(g.preopens[0].writable);
        assert!(g.network[0].allows("127.0.0.1:80".parse().unwrap()));
        assert!(!g.network[0].allows("127.0.0.1:81".parse().unwrap()));
        assert!(g.network[1].allows("10.1.2.3:443".parse().unwrap()));
        assert!(g.network[2].allows("[::1]:9".parse().unwrap()));
        let e = parse("[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.grants]\nnetwork = [\"example.com:80\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backends[0].grants.network[0]"), "{e}");
        let e = parse("[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[[backends.grants.preopens]]\nhost = \"/no/such/dir\"\nguest = \"/d\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backends[0].grants.preopens[0].host"), "{e}");
    }
}
