//! The client side of the `gatehouse` command: small commands over the gRPC
//! API, readable by people by default and JSON with `--json`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::parse_duration;
use crate::keys::{Scope, Scopes};
use crate::proto::v1 as pb;
use crate::proto::v1::gateway_client::GatewayClient;

/// Exit code for a gRPC failure.
pub const EXIT_RPC: i32 = 2;
/// Exit code when the backend answered with a command error.
pub const EXIT_COMMAND_ERROR: i32 = 3;

/// What went wrong in a client command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The call failed with a gRPC status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 64,
            _ => EXIT_RPC,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Rpc(s)
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(c.to_ascii_uppercase()))
        })
        .collect()
}

/// Sends `authorization: Bearer <key>` on every call, when there is a key.
#[derive(Clone)]
pub struct BearerKey(Option<MetadataValue<Ascii>>);

impl BearerKey {
    /// The header value for `key`; `None` sends nothing (local development
    /// mode).
    pub fn new(key: Option<&str>) -> Result<Self, CliError> {
        let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok(Self(None));
        };
        let mut value: MetadataValue<Ascii> = format!("Bearer {key}").parse().map_err(|_| {
            CliError::Usage("the API key has characters a header cannot carry".into())
        })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for BearerKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connected client plus output settings.
pub struct Client {
    inner: GatewayClient<InterceptedService<Channel, BearerKey>>,
    json: bool,
}

impl Client {
    /// Connects to `addr` (`http://host:port` or `host:port`); every call
    /// carries `key` if given.
    pub async fn connect(addr: &str, json: bool, key: Option<&str>) -> Result<Self, CliError> {
        let bearer = BearerKey::new(key)?;
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let channel = Channel::from_shared(uri.clone())
            .map_err(|e| CliError::Usage(format!("bad address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| CliError::Connect {
                addr: uri,
                message: source_chain(&e),
            })?;
        Ok(Self {
            inner: GatewayClient::with_interceptor(channel, bearer)
                .max_decoding_message_size(64 << 20),
            json,
        })
    }

    /// Whether output is JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// `gatehouse backends`
    pub async fn backends(&mut self) -> Result<i32, CliError> {
        let r = self
            .inner
            .list_backends(pb::ListBackendsRequest {})
            .await?
            .into_inner();
        if self.json {
            let list: Vec<Value> = r.backends.iter().map(backend_json).collect();
            println!("{}", json!({ "backends": list }));
        } else {
            println!(
                "{:<16} {:<6} {:<10} {:<20} DESCRIPTION",
                "NAME", "KIND", "VERSION", "DIGEST"
            );
            for b in &r.backends {
                println!(
                    "{:<16} {:<6} {:<10} {:<20} {}",
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

    /// `gatehouse open BACKEND`
    pub async fn open(
        &mut self,
        backend: String,
        config: Vec<(String, String)>,
        name: Option<String>,
        lease: Option<String>,
        command_timeout: Option<String>,
    ) -> Result<i32, CliError> {
        let dur = |s: Option<String>| -> Result<Option<prost_types::Duration>, CliError> {
            s.map(|s| {
                parse_duration(&s)
                    .map(crate::api_duration)
                    .map_err(CliError::Usage)
            })
            .transpose()
        };
        let request = pb::OpenSessionRequest {
            backend,
            client_session_name: name.unwrap_or_default(),
            client_correlation_id: String::new(),
            command_timeout: dur(command_timeout)?,
            lease: dur(lease)?,
            config: config.into_iter().collect::<HashMap<_, _>>(),
        };
        let r = self.inner.open_session(request).await?.into_inner();
        let s = r.session.unwrap_or_default();
        if self.json {
            println!("{}", session_json(&s));
        } else {
            println!("{}", s.session_id);
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
        let r = self
            .inner
            .invoke(pb::InvokeRequest {
                session_id,
                command: Some(pb::Command {
                    name: command,
                    payload,
                }),
                correlation_id: String::new(),
            })
            .await?
            .into_inner();
        if self.json {
            let error = r.error.as_ref().map(command_error_json);
            println!(
                "{}",
                json!({ "payload": payload_json(&r.payload), "error": error })
            );
        } else if let Some(e) = &r.error {
            eprintln!("command error ({}): {}", error_kind(e.kind), e.message);
        } else {
            println!("{}", payload_text(&r.payload));
        }
        Ok(if r.error.is_some() {
            EXIT_COMMAND_ERROR
        } else {
            0
        })
    }

    /// `gatehouse events SESSION`
    pub async fn events(
        &mut self,
        session_id: String,
        resume_after: Option<u64>,
        count: Option<u64>,
        follow: bool,
    ) -> Result<i32, CliError> {
        // Without --follow, stop once caught up with what was emitted so far.
        let until = if follow {
            None
        } else {
            let info = self
                .inner
                .get_session(pb::GetSessionRequest {
                    session_id: session_id.clone(),
                })
                .await?
                .into_inner();
            if info.events_emitted <= resume_after.unwrap_or(0) {
                return Ok(0);
            }
            Some(info.events_emitted)
        };
        let mut stream = self
            .inner
            .stream_events(pb::StreamEventsRequest {
                session_id,
                resume_after_sequence: resume_after,
            })
            .await?
            .into_inner();
        let mut seen = 0u64;
        while let Some(e) = stream.message().await? {
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
        let s = self
            .inner
            .get_session(pb::GetSessionRequest { session_id })
            .await?
            .into_inner();
        self.print_session(&s);
        Ok(0)
    }

    /// `gatehouse renew SESSION`
    pub async fn renew(&mut self, session_id: String) -> Result<i32, CliError> {
        let s = self
            .inner
            .renew_lease(pb::RenewLeaseRequest { session_id })
            .await?
            .into_inner();
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
        let r = self
            .inner
            .list_sessions(pb::ListSessionsRequest {})
            .await?
            .into_inner();
        if self.json {
            let list: Vec<Value> = r.sessions.iter().map(session_json).collect();
            println!("{}", json!({ "sessions": list }));
        } else {
            println!(
                "{:<34} {:<12} {:<10} {:<20} FAULT",
                "SESSION", "BACKEND", "TENANT", "STATE"
            );
            for s in &r.sessions {
                println!(
                    "{:<34} {:<12} {:<10} {:<20} {}",
                    s.session_id,
                    s.backend,
                    s.tenant,
                    state_name(s.state),
                    s.final_fault
                );
            }
        }
        Ok(0)
    }

    /// `gatehouse bench`
    pub async fn bench(&mut self, options: crate::loadgen::BenchOptions) -> Result<i32, CliError> {
        let report = crate::loadgen::run(self.inner.clone(), options).await;
        if self.json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.to_text());
        }
        Ok(0)
    }

    /// `gatehouse close SESSION`
    pub async fn close(&mut self, session_id: String) -> Result<i32, CliError> {
        let r = self
            .inner
            .close_session(pb::CloseSessionRequest { session_id })
            .await?
            .into_inner();
        if self.json {
            println!(
                "{}",
                json!({
                    "session_id": r.session_id,
                    "final_state": state_name(r.final_state),
                    "already_closed": r.already_closed,
                })
            );
        } else if r.already_closed {
            println!("{} was already {}", r.session_id, state_name(r.final_state));
        } else {
            println!("{} {}", r.session_id, state_name(r.final_state));
        }
        Ok(0)
    }
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

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
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

fn error_kind(k: i32) -> String {
    pb::command_error::Kind::try_from(k)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("KIND_")
                .to_ascii_lowercase()
                .replace('_', "-")
        })
        .unwrap_or_else(|_| "unknown".into())
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

fn command_error_json(e: &pb::CommandError) -> Value {
    json!({ "kind": error_kind(e.kind), "message": e.message })
}

fn backend_json(b: &pb::BackendInfo) -> Value {
    json!({
        "name": b.name,
        "kind": kind_name(b.kind),
        "version": b.version,
        "digest": b.digest,
        "description": b.description,
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
        "final_fault": (!s.final_fault.is_empty()).then(|| s.final_fault.clone()),
        "final_fault_detail": (!s.final_fault_detail.is_empty()).then(|| s.final_fault_detail.clone()),
        "close_reason": close_reason_name(s.close_reason),
        "command_timeout": dur(&s.command_timeout),
        "lease": dur(&s.lease),
        "events_emitted": s.events_emitted,
        "events_dropped": s.events_dropped,
    })
}
