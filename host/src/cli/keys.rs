//! `gatehouse keys create|list|revoke`: the key store of a running gateway,
//! through the admin API (`keys new`, which needs no gateway, is in the
//! parent module).

use std::time::Duration;

use serde_json::{Value, json};

use super::{CliError, Client};
use crate::client::NewKey;
use crate::keystore::format_utc;
use crate::proto::admin::v1 as pb;

/// Parses an expiry: `30d`, `12h`, `90m`, `45s` (days as well as the
/// config's units).
pub fn parse_expiry(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Some(days) = text.strip_suffix('d') {
        let n: u64 = days
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 30d, 12h or 90m"))?;
        if n == 0 || n > 36_500 {
            return Err(format!("{text:?}: use 1d to 36500d"));
        }
        return Ok(Duration::from_secs(n * 86_400));
    }
    let d = crate::config::parse_duration(text).map_err(|e| format!("{e} (or days, like 30d)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("{text:?}: a key must live at least 1s"));
    }
    Ok(d)
}

fn when(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref().map(|t| format_utc(t.seconds))
}

fn source(k: &pb::KeyInfo) -> &'static str {
    if k.source == pb::KeySource::Config as i32 {
        "config"
    } else {
        "store"
    }
}

fn status(k: &pb::KeyInfo) -> &'static str {
    if k.revoked.is_some() {
        "revoked"
    } else if !k.active {
        "expired"
    } else {
        "active"
    }
}

fn key_json(k: &pb::KeyInfo) -> Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "name": k.name,
        "scopes": k.scopes,
        "source": source(k),
        "status": status(k),
        "active": k.active,
        "created": when(&k.created),
        "expires": when(&k.expires),
        "last_used": when(&k.last_used),
        "revoked": when(&k.revoked),
        "cpu_time": k.cpu_time.as_ref().map(|d| d.to_string()),
    })
}

impl Client {
    /// `gatehouse keys create`: prints the new key once.
    pub async fn create_key(
        &mut self,
        tenant: String,
        scopes: Vec<String>,
        name: Option<String>,
        expires: Option<String>,
    ) -> Result<i32, CliError> {
        let expires_in = expires
            .as_deref()
            .map(parse_expiry)
            .transpose()
            .map_err(|e| CliError::Usage(format!("--expires: {e}")))?;
        let created = self
            .gateway
            .create_key(NewKey {
                tenant,
                scopes,
                name,
                expires_in,
            })
            .await?;
        let info = created.info.unwrap_or_default();
        if self.json {
            let mut value = key_json(&info);
            value["key"] = created.key.into();
            println!("{value}");
        } else {
            println!(
                "# Key {} for tenant {:?} ({}). It is shown only now: the gateway keeps only its hash.",
                info.id,
                info.tenant,
                info.scopes.join(",")
            );
            if let Some(e) = when(&info.expires) {
                println!("# Expires {e} UTC.");
            }
            println!("{}", created.key);
        }
        Ok(0)
    }

    /// `gatehouse keys list`
    pub async fn list_keys(&mut self, tenant: Option<String>, all: bool) -> Result<i32, CliError> {
        let keys = self
            .gateway
            .keys(pb::ListKeysRequest {
                tenant: tenant.unwrap_or_default(),
                include_inactive: all,
            })
            .await?;
        if self.json {
            let list: Vec<Value> = keys.iter().map(key_json).collect();
            println!("{}", json!({ "keys": list }));
            return Ok(0);
        }
        println!(
            "{:<24} {:<12} {:<14} {:<8} {:<8} {:<20} {:<20} {:>10} SCOPES",
            "ID", "TENANT", "NAME", "SOURCE", "STATUS", "EXPIRES (UTC)", "LAST USED (UTC)", "CPU"
        );
        for k in &keys {
            println!(
                "{:<24} {:<12} {:<14} {:<8} {:<8} {:<20} {:<20} {:>10} {}",
                k.id,
                k.tenant,
                if k.name.is_empty() { "-" } else { &k.name },
                source(k),
                status(k),
                when(&k.expires).unwrap_or_else(|| "never".into()),
                when(&k.last_used).unwrap_or_else(|| "-".into()),
                crate::cli::cpu_text(&k.cpu_time),
                k.scopes.join(",")
            );
        }
        Ok(0)
    }

    /// `gatehouse keys revoke ID`
    pub async fn revoke_key(&mut self, id: String) -> Result<i32, CliError> {
        let r = self.gateway.revoke_key(id).await?;
        let info = r.info.unwrap_or_default();
        if self.json {
            let mut value = key_json(&info);
            value["already_revoked"] = r.already_revoked.into();
            println!("{value}");
        } else if r.already_revoked {
            println!("{} was already revoked", info.id);
        } else {
            println!("revoked {} (tenant {:?})", info.id, info.tenant);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_take_days_and_the_config_units() {
        assert_eq!(
            parse_expiry("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_expiry("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_expiry("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_expiry("0d").is_err());
        assert!(parse_expiry("xd").is_err());
        assert!(parse_expiry("10ms").is_err());
        assert!(parse_expiry("5y").is_err());
    }
}
