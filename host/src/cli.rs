//! The client side of the `gatehouse` command: small commands over the gRPC
//! API (through [`crate::client`]), readable by people by default and JSON
//! with `--json`.

mod keys;

pub use self::keys::parse_expiry;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::client::{self, Gateway, OpenOptions};
use crate::config::parse_duration;
use crate::keys::{Scope, Scopes};
use crate::proto::v1 as pb;

/// Exit code for a gRPC failure.
pub const EXIT_RPC: i32 = 2;
/// Exit code when the backend answered with a command error.
pub const EXIT_COMMAND_ERROR: i32 = 3;
/// Exit code for a bad argument.
pub const EXIT_USAGE: i32 = 64;

/// What went wrong in a client command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The call failed: no connection, a gRPC status, or a command error.
    #[error("{0}")]
    Client(#[from] client::Error),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Client(client::Error::InvalidArgument(_)) => EXIT_USAGE,
            CliError::Client(client::Error::Command(_)) => EXIT_COMMAND_ERROR,
            CliError::Client(_) => EXIT_RPC,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Client(s.into())
    }
}

/// The PEM files of a client's TLS: `--ca-cert`, `--client-cert`,
/// `--client-key`.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA to trust instead of the system roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// The client certificate chain, for mutual TLS.
    pub client_cert: Option<std::path::PathBuf>,
    /// Its private key.
    pub client_key: Option<std::path::PathBuf>,
}

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("{flag} {}: {e}", path.display())))
}

/// A connected client plus output settings.
pub struct Client {
    gateway: Gateway,
    json: bool,
}

impl Client {
    /// Connects to `addr` (`http://host:port`, `https://host:port` or
    /// `host:port`); every call carries `key` if given.
    pub async fn connect(
        addr: &str,
        json: bool,
        key: Option<&str>,
        tls: &TlsFiles,
    ) -> Result<Self, CliError> {
        let mut connect = Gateway::connect(addr);
        if let Some(key) = key {
            connect = connect.with_key(key);
        }
        if let Some(ca) = &tls.ca_cert {
            connect = connect.ca_certificate(read_pem("--ca-cert", ca)?);
        }
        match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => {
                connect = connect.client_identity(
                    read_pem("--client-cert", cert)?,
                    read_pem("--client-key", key)?,
                );
            }
            (None, None) => {}
            _ => {
                return Err(CliError::Usage(
                    "--client-cert and --client-key go together".into(),
                ));
            }
        }
        Ok(Self {
            gateway: connect.await?,
            json,
        })
    }

    /// Whether output is JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// `gatehouse bench`
    pub async fn bench(
        &mut self,
        options: crate::loadgen::BenchOptions,
        compare: Option<crate::loadgen::Mode>,
    ) -> Result<i32, CliError> {
        if let Some(baseline) = compare {
            let both = crate::loadgen::compare(self.gateway.raw(), options, baseline).await;
            if self.json {
                println!("{}", both.to_json());
            } else {
                print!("{}", both.to_text());
            }
            return Ok(0);
        }
        let report = crate::loadgen::run(self.gateway.raw(), options).await;
        if self.json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.to_text());
        }
        Ok(0)
    }

    /// `gatehouse backends`
    pub async fn backends(&mut self) -> Result<i32, CliError> {
        let backends = self.gateway.backends().await?;
        if self.json {
            let list: Vec<Value> = backends.iter().map(backend_json).collect();
            println!("{}", json!({ "backends": list }));
        } else {
            println!(
                "{:<16} {:<6} {:<10} {:<20} DESCRIPTION",
                "NAME", "KIND", "VERSION", "DIGEST"
            );
            for b in &backends {
                let retiring = if b.state == pb::BackendVersionState::Retiring as i32 {
                    format!("[retiring, {} sessions] ", b.live_sessions)
                } else if b.state == pb::BackendVersionState::Canary as i32 {
                    format!("[canary, {} sessions] ", b.live_sessions)
                } else {
                    String::new()
                };
                println!(
                    "{:<16} {:<6} {:<10} {:<20} {retiring}{}",
                    b.name,
                    kind_name(b.kind),
                    b.version,
                    short_digest(&b.digest),
                    b.description
                );
            }
        }
        Ok(0)
    }

    /// `gatehouse drain`: how many sessions drain, and for how long.
    pub async fn drain(&mut self, timeout: Option<String>) -> Result<i32, CliError> {
        let timeout = timeout
            .map(|t| parse_duration(&t).map_err(|e| CliError::Usage(format!("--timeout: {e}"))))
            .transpose()?;
        let r = self.gateway.drain(timeout).await?;
        let secs = r
            .timeout
            .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9);
        if self.json {
            println!(
                "{}",
                json!({
                    "sessions": r.sessions,
                    "timeout_seconds": secs,
                    "already_draining": r.already_draining,
                })
            );
        } else if r.already_draining {
            println!("already draining ({} sessions left)", r.sessions);
        } else {
            println!(
                "draining: {} sessions go on for up to {secs}s, then the rest are closed; new opens go elsewhere",
                r.sessions
            );
        }
        Ok(0)
    }

    /// `gatehouse reload`: what the reload changed, or why it changed
    /// nothing.
    pub async fn reload(
        &mut self,
        promote: Option<String>,
        rollback: Option<String>,
    ) -> Result<i32, CliError> {
        let r = self
            .gateway
            .reload_with(pb::ReloadRequest {
                promote: promote.unwrap_or_default(),
                rollback: rollback.unwrap_or_default(),
            })
            .await?;
        if self.json {
            println!(
                "{}",
                json!({
                    "added": r.added,
                    "updated": r.updated,
                    "removed": r.removed,
                    "unchanged": r.unchanged,
                    "tenants": r.tenants,
                    "restart_required": r.restart_required,
                })
            );
            return Ok(0);
        }
        let list = |names: &[String]| {
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(", ")
            }
        };
        println!("reloaded");
        println!("  added:     {}", list(&r.added));
        println!("  updated:   {}", list(&r.updated));
        println!("  removed:   {}", list(&r.removed));
        println!("  unchanged: {}", list(&r.unchanged));
        println!("  tenants:   {}", r.tenants);
        for key in &r.restart_required {
            println!("  needs a restart to change: {key} (the running value stays)");
        }
        Ok(0)
    }

    /// `gatehouse open BACKEND`
    pub async fn open(
        &mut self,
        backend: String,
        config: Vec<(String, String)>,
        name: Option<String>,
        lease: Option<String>,
        command_timeout: Option<String>,
    ) -> Result<i32, CliError> {
        let mut options = OpenOptions::new(backend);
        options.name = name.unwrap_or_default();
        options.config = config.into_iter().collect();
        options.lease = lease
            .map(|s| parse_duration(&s))
            .transpose()
            .map_err(CliError::Usage)?;
        options.command_timeout = command_timeout
            .map(|s| parse_duration(&s))
            .transpose()
            .map_err(CliError::Usage)?;
        let session = self.gateway.open_with(options).await?;
        if self.json {
            println!("{}", session_json(&session.info()));
        } else {
            println!("{}", session.id());
        }
        Ok(0)
    }

    /// `gatehouse invoke SESSION COMMAND [PAYLOAD]`
    pub async fn invoke(
        &mut self,
        session_id: String,
        command: String,
        payload: Vec<u8>,
    ) -> Result<i32, CliError> {
        let session = self.gateway.session(session_id);
        let result = session.invoke(command, payload).await;
        self.print_reply(result)
    }

    /// `gatehouse call BACKEND COMMAND [PAYLOAD]`
    pub async fn call(
        &mut self,
        backend: String,
        command: String,
        payload: Vec<u8>,
        config: Vec<(String, String)>,
        command_timeout: Option<String>,
    ) -> Result<i32, CliError> {
        let mut call = client::OneShot::new(backend, command, payload);
        call.config = config.into_iter().collect();
        call.command_timeout = command_timeout
            .map(|s| parse_duration(&s))
            .transpose()
            .map_err(CliError::Usage)?;
        let result = self.gateway.call_with(call).await;
        self.print_reply(result)
    }

    /// Prints an invoke's or a call's reply (or its command error, exiting
    /// 3).
    fn print_reply(&self, result: Result<client::Reply, client::Error>) -> Result<i32, CliError> {
        match result {
            Ok(reply) => {
                if self.json {
                    println!(
                        "{}",
                        json!({ "payload": payload_json(&reply.payload), "error": null })
                    );
                } else if !reply.payload.is_empty() {
                    // An empty reply prints nothing, not a blank line.
                    println!("{}", payload_text(&reply.payload));
                }
                Ok(0)
            }
            Err(client::Error::Command(e)) => {
                if self.json {
                    println!(
                        "{}",
                        json!({
                            "payload": "",
                            "error": { "kind": e.kind.as_str(), "message": e.message },
                        })
                    );
                } else {
                    eprintln!("{e}");
                }
                Ok(EXIT_COMMAND_ERROR)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `gatehouse events SESSION`
    pub async fn events(
        &mut self,
        session_id: String,
        resume_after: Option<u64>,
        count: Option<u64>,
        follow: bool,
    ) -> Result<i32, CliError> {
        let session = self.gateway.session(session_id);
        // Without --follow, stop once caught up with what was emitted so far.
        let until = if follow {
            None
        } else {
            let info = session.refresh().await?;
            if info.events_emitted <= resume_after.unwrap_or(0) {
                return Ok(0);
            }
            Some(info.events_emitted)
        };
        let mut stream = match resume_after {
            Some(after) => session.events_from(after),
            None => session.events(),
        };
        let mut seen = 0u64;
        while let Some(e) = stream.next().await {
            let e = e?;
            if self.json {
                println!(
                    "{}",
                    json!({
                        "sequence": e.sequence,
                        "name": e.name,
                        "payload": payload_json(&e.payload),
                        "emitted_at": e.emitted_at.map(|t| t.to_string()),
                        "dropped_before": e.dropped_before,
                    })
                );
            } else {
                if e.dropped_before > 0 {
                    println!("({} events dropped)", e.dropped_before);
                }
                println!("#{} {} {}", e.sequence, e.name, payload_text(&e.payload));
            }
            seen += 1;
            if count.is_some_and(|c| seen >= c) || until.is_some_and(|u| e.sequence >= u) {
                break;
            }
        }
        Ok(0)
    }

    /// `gatehouse session SESSION`
    pub async fn get(&mut self, session_id: String) -> Result<i32, CliError> {
        let s = self.gateway.session(session_id).refresh().await?;
        self.print_session(&s);
        Ok(0)
    }

    /// `gatehouse restart SESSION [--fresh]`
    pub async fn restart(
        &mut self,
        session_id: String,
        from_snapshot: bool,
    ) -> Result<i32, CliError> {
        let s = self
            .gateway
            .session(session_id)
            .restart(from_snapshot)
            .await?;
        self.print_session(&s);
        Ok(0)
    }

    /// `gatehouse upgrade SESSION [VERSION]`
    pub async fn upgrade(&mut self, session_id: String, version: String) -> Result<i32, CliError> {
        let s = self.gateway.session(session_id).upgrade(version).await?;
        self.print_session(&s);
        Ok(0)
    }

    /// `gatehouse renew SESSION`
    pub async fn renew(&mut self, session_id: String) -> Result<i32, CliError> {
        let s = self.gateway.session(session_id).renew().await?;
        self.print_session(&s);
        Ok(0)
    }

    fn print_session(&self, s: &pb::SessionInfo) {
        if self.json {
            println!("{}", session_json(s));
            return;
        }
        let v = session_json(s);
        if let Value::Object(map) = v {
            for (k, v) in map {
                let text = match v {
                    Value::String(s) => s,
                    Value::Null => continue,
                    other => other.to_string(),
                };
                println!("{k:<22} {text}");
            }
        }
    }

    /// `gatehouse sessions`
    pub async fn sessions(&mut self) -> Result<i32, CliError> {
        let sessions = self.gateway.sessions().await?;
        if self.json {
            let list: Vec<Value> = sessions.iter().map(session_json).collect();
            println!("{}", json!({ "sessions": list }));
        } else {
            println!(
                "{:<34} {:<12} {:<10} {:<10} {:>10} {:<16} FAULT",
                "SESSION", "BACKEND", "TENANT", "STATE", "CPU", "CLOSE-REASON"
            );
            for s in &sessions {
                println!(
                    "{:<34} {:<12} {:<10} {:<10} {:>10} {:<16} {}",
                    s.session_id,
                    s.backend,
                    s.tenant,
                    state_name(s.state),
                    cpu_text(&s.cpu_time),
                    close_reason_name(s.close_reason).unwrap_or_else(|| "-".into()),
                    s.final_fault
                );
            }
        }
        Ok(0)
    }

    /// `gatehouse close SESSION`
    pub async fn close(&mut self, session_id: String) -> Result<i32, CliError> {
        let r = self.gateway.session(session_id).close().await?;
        let state = state_name(r.final_state as i32);
        if self.json {
            println!(
                "{}",
                json!({
                    "session_id": r.session_id,
                    "final_state": state,
                    "already_closed": r.already_closed,
                })
            );
        } else if r.already_closed {
            println!("{} was already {state}", r.session_id);
        } else {
            println!("{} {state}", r.session_id);
        }
        Ok(0)
    }
}

/// Parses `k=v` for `--config`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn kind_name(k: i32) -> &'static str {
    match pb::BackendKind::try_from(k) {
        Ok(pb::BackendKind::Wasm) => "wasm",
        Ok(pb::BackendKind::Native) => "native",
        _ => "?",
    }
}

/// The wire name of a state, e.g. `READY`.
pub fn state_name(s: i32) -> String {
    pb::SessionState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("SESSION_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("UNKNOWN({s})"))
}

fn close_reason_name(r: i32) -> Option<String> {
    match pb::CloseReason::try_from(r) {
        Ok(pb::CloseReason::Unspecified) | Err(_) => None,
        Ok(r) => Some(
            r.as_str_name()
                .trim_start_matches("CLOSE_REASON_")
                .to_ascii_lowercase()
                .replace('_', "-"),
        ),
    }
}

fn short_digest(d: &str) -> String {
    d.chars().take(19).collect()
}

fn payload_text(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) => s.to_string(),
        Err(_) => format!("0x{}", hex::encode(p)),
    }
}

fn payload_json(p: &[u8]) -> Value {
    match std::str::from_utf8(p) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex::encode(p) }),
    }
}

fn backend_json(b: &pb::BackendInfo) -> Value {
    json!({
        "name": b.name,
        "kind": kind_name(b.kind),
        "version": b.version,
        "digest": b.digest,
        "description": b.description,
        "retiring": b.state == pb::BackendVersionState::Retiring as i32,
        "canary": b.state == pb::BackendVersionState::Canary as i32,
        "live_sessions": b.live_sessions,
    })
}

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .map_or(Value::Null, |t| Value::String(t.to_string()))
}

fn dur(d: &Option<prost_types::Duration>) -> Value {
    d.as_ref().map_or(Value::Null, |d| {
        Value::String(format!("{}s", d.seconds as f64 + f64::from(d.nanos) / 1e9))
    })
}

/// A session's CPU time for the table: `12.3ms`, `4.56s`; `-` from a
/// gateway that does not report it.
pub fn cpu_text(d: &Option<prost_types::Duration>) -> String {
    let Some(d) = d else {
        return "-".into();
    };
    let secs = d.seconds as f64 + f64::from(d.nanos) / 1e9;
    if secs < 1.0 {
        format!("{:.1}ms", secs * 1e3)
    } else {
        format!("{secs:.2}s")
    }
}

fn session_json(s: &pb::SessionInfo) -> Value {
    json!({
        "session_id": s.session_id,
        "backend": s.backend,
        "backend_kind": kind_name(s.backend_kind),
        "backend_version": s.backend_version,
        "tenant": s.tenant,
        "state": state_name(s.state),
        "client_session_name": s.client_session_name,
        "client_correlation_id": s.client_correlation_id,
        "opened_at": ts(&s.opened_at),
        "last_activity_at": ts(&s.last_activity_at),
        "lease_expires_at": ts(&s.lease_expires_at),
        "worker_pid": (s.worker_pid != 0).then_some(s.worker_pid),
        "worker_processes": (s.worker_processes != 0).then_some(s.worker_processes),
        "final_fault": (!s.final_fault.is_empty()).then(|| s.final_fault.clone()),
        "final_fault_detail": (!s.final_fault_detail.is_empty()).then(|| s.final_fault_detail.clone()),
        "close_reason": close_reason_name(s.close_reason),
        "command_timeout": dur(&s.command_timeout),
        "lease": dur(&s.lease),
        "events_emitted": s.events_emitted,
        "events_dropped": s.events_dropped,
        "backend_digest": s.backend_digest,
        "restarts": s.restarts,
        "last_fault": (!s.last_fault.is_empty()).then(|| s.last_fault.clone()),
        "last_fault_detail": (!s.last_fault_detail.is_empty()).then(|| s.last_fault_detail.clone()),
        "snapshot_bytes": s.snapshot_bytes,
        "cpu_time": dur(&s.cpu_time),
    })
}

/// `gatehouse keys new --tenant NAME --scope S...`: prints a new key once,
/// and the config snippet that holds its hash.
pub fn new_key(
    tenant: &str,
    scopes: &[String],
    name: Option<&str>,
    json: bool,
) -> Result<i32, CliError> {
    use crate::config::tenants::valid_name;
    let bad_name = |what: &str, n: &str| {
        CliError::Usage(format!(
            "{what} {n:?}: use 1-64 letters, digits, '-', '_' or '.'"
        ))
    };
    if !valid_name(tenant) {
        return Err(bad_name("tenant", tenant));
    }
    if let Some(n) = name
        && !valid_name(n)
    {
        return Err(bad_name("key name", n));
    }
    let scopes: Scopes = scopes
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| Scope::parse(s.trim()).map_err(CliError::Usage))
        .collect::<Result<_, _>>()?;
    if scopes.is_empty() {
        return Err(CliError::Usage("give at least one --scope".into()));
    }
    let (key, hash) = crate::keys::generate().map_err(CliError::Usage)?;
    let names: Vec<String> = scopes.iter().map(|s| format!("{:?}", s.as_str())).collect();
    let mut snippet = String::from("[[tenants.keys]]\n");
    if let Some(n) = name {
        snippet.push_str(&format!("name = {n:?}\n"));
    }
    snippet.push_str(&format!(
        "hash = \"{hash}\"\nscopes = [{}]\n",
        names.join(", ")
    ));
    if json {
        let scopes: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
        println!(
            "{}",
            json!({
                "tenant": tenant,
                "key": key,
                "hash": hash.to_string(),
                "scopes": scopes,
                "toml": snippet,
            })
        );
    } else {
        println!(
            "# API key for tenant {tenant:?}. It is shown only now: the gateway keeps only its hash."
        );
        println!("{key}");
        println!();
        println!("# Add this under the [[tenants]] entry with name = {tenant:?}:");
        print!("{snippet}");
    }
    Ok(0)
}
