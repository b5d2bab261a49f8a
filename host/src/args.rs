//! The command line's grammar: every command and option of `gatehouse`,
//! and the rules for where the client options may stand. `main.rs`
//! dispatches what this parses.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use gatehouse::cli;
use gatehouse::server::telemetry::LogFormat;

/// A gRPC gateway that gives every client session its own sandboxed backend.
///
/// `gatehouse serve` runs the gateway; the other commands are a small client
/// for it. Try: gatehouse serve & SID=$(gatehouse open echo); gatehouse invoke $SID count
#[derive(Parser)]
#[command(name = "gatehouse", version, about, long_about)]
pub(crate) struct Args {
    /// Given before the command; the same options after a client command
    /// win over these.
    #[command(flatten)]
    pub(crate) client: ClientOpts,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// How the client commands reach the gateway. Accepted before the command
/// (`gatehouse --addr X backends`) and after a client command (`gatehouse
/// backends --addr X`), and listed only where they mean something.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Client options")]
pub(crate) struct ClientOpts {
    /// Gateway address for the client commands.
    #[arg(
        long,
        env = "GATEHOUSE_ADDR",
        hide_env_values = true,
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) addr: String,
    /// API key for the client commands, sent as `authorization: Bearer KEY`
    /// (not needed in local development mode).
    #[arg(long, env = "GATEHOUSE_KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,
    /// CA certificate (PEM) to trust for an https:// gateway, instead of
    /// the system's roots.
    #[arg(
        long,
        env = "GATEHOUSE_CA_CERT",
        hide_env_values = true,
        value_name = "PEM"
    )]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for a gateway that asks for one (mTLS).
    #[arg(
        long,
        env = "GATEHOUSE_CLIENT_CERT",
        hide_env_values = true,
        value_name = "PEM"
    )]
    pub(crate) client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "GATEHOUSE_CLIENT_KEY",
        hide_env_values = true,
        value_name = "PEM"
    )]
    pub(crate) client_key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) output: OutputOpts,
}

/// The ids of [`ClientOpts`]' options, as clap names them.
pub(crate) const CLIENT_OPTION_IDS: [&str; 6] = [
    "addr",
    "key",
    "ca_cert",
    "client_cert",
    "client_key",
    "json",
];

impl ClientOpts {
    /// These options (given before the command) with those given after
    /// it (`after`, parsed into `matches`) on top: an option typed after
    /// the command wins, then one typed before it, then the environment,
    /// then the default.
    pub(crate) fn merge(self, after: ClientOpts, matches: &ArgMatches) -> ClientOpts {
        let typed = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        ClientOpts {
            addr: if typed("addr") { after.addr } else { self.addr },
            key: if typed("key") { after.key } else { self.key },
            ca_cert: if typed("ca_cert") {
                after.ca_cert
            } else {
                self.ca_cert
            },
            client_cert: if typed("client_cert") {
                after.client_cert
            } else {
                self.client_cert
            },
            client_key: if typed("client_key") {
                after.client_key
            } else {
                self.client_key
            },
            output: OutputOpts {
                json: self.output.json || after.output.json,
            },
        }
    }
}

/// Output format, for every command that prints results.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub(crate) struct OutputOpts {
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Run the gateway. With no config it serves the built-in example backends
    /// on 127.0.0.1:50051.
    ///
    /// Example: gatehouse serve --config gatehouse.toml --listen 127.0.0.1:6000
    Serve {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// gRPC listen address (overrides the file).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Prometheus, /healthz and /readyz listen address (overrides the
        /// file); "off" disables it.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Log lines on stderr as text or JSON.
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "GATEHOUSE_LOG_FORMAT", hide_env_values = true)]
        log_format: LogFormat,
        /// What to log, in RUST_LOG syntax, e.g. "info,gatehouse::rpc=warn".
        #[arg(long, env = "RUST_LOG", hide_env_values = true, default_value = "info")]
        log_filter: String,
    },
    /// Work with config files.
    ///
    /// Example: gatehouse config check gatehouse.toml
    #[command(subcommand)]
    Config(ConfigCmd),
    /// List the backends sessions can be opened on.
    ///
    /// Example: gatehouse backends --json
    Backends {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Re-read the gateway's config file and apply it whole, or not at all
    /// (needs an admin key). Live sessions keep their backend version.
    ///
    /// Example: gatehouse reload --key $ADMIN_KEY
    Reload {
        /// Instead: end BACKEND's canary rollout, making the canary current.
        #[arg(long, value_name = "BACKEND", conflicts_with = "rollback")]
        promote: Option<String>,
        /// Instead: end BACKEND's canary rollout, retiring the canary.
        #[arg(long, value_name = "BACKEND")]
        rollback: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Drain this gateway (needs an admin key): health turns NOT_SERVING so
    /// a proxy sends new opens to other nodes, live sessions go on until
    /// they end or the timeout passes, then the rest are closed.
    ///
    /// Example: gatehouse drain --addr http://10.0.0.5:50051 --timeout 2m
    Drain {
        /// How long sessions may go on (default: [cluster] drain_timeout).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Open a session and print its id.
    ///
    /// The session lives until it is closed or its lease runs out; every call
    /// on it renews the lease.
    ///
    /// Example: SID=$(gatehouse open echo --config greeting=hi --lease 5m)
    Open {
        /// Backend name.
        backend: String,
        /// Session config entries, KEY=VALUE (repeatable).
        #[arg(long = "config", value_parser = cli::parse_kv)]
        config: Vec<(String, String)>,
        /// A name for the session.
        #[arg(long)]
        name: Option<String>,
        /// Lease, e.g. 60s.
        #[arg(long)]
        lease: Option<String>,
        /// Per-command timeout, e.g. 5s.
        #[arg(long)]
        command_timeout: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run one command on a session and print its reply.
    ///
    /// Exits 3 when the plugin answers with a command error.
    ///
    /// Example: gatehouse invoke $SID echo hello; echo '{"key": "a"}' | gatehouse invoke $KV get -
    Invoke {
        /// Session id.
        session: String,
        /// Command name.
        command: String,
        /// Payload text; "-" reads it from stdin.
        payload: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run one command on a fresh instance of a backend, print its reply,
    /// and leave nothing behind: no session, no id (the Call RPC).
    ///
    /// Exits 3 when the plugin answers with a command error. Events the
    /// plugin emits are dropped.
    ///
    /// Example: gatehouse call echo echo hello; echo '{"key": "a"}' | gatehouse call kv get -
    Call {
        /// Backend name.
        backend: String,
        /// Command name.
        command: String,
        /// Payload text; "-" reads it from stdin.
        payload: Option<String>,
        /// Config entries, KEY=VALUE (repeatable).
        #[arg(long = "config", value_parser = cli::parse_kv)]
        config: Vec<(String, String)>,
        /// Command timeout, e.g. 5s.
        #[arg(long)]
        command_timeout: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a session's events.
    ///
    /// Without --follow it stops once it has printed what was emitted so far.
    /// With --follow it keeps the stream open, resuming after the last event
    /// printed if the connection drops, until the session closes.
    ///
    /// Example: gatehouse events $SID --follow
    Events {
        /// Session id.
        session: String,
        /// Replay events after this sequence.
        #[arg(long)]
        resume_after: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Keep waiting for new events instead of stopping once caught up.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Describe one session: state, lease, counters, fault.
    ///
    /// Example: gatehouse session $SID --json
    Session {
        /// Session id.
        session: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Renew a session's lease (by its lease duration from now).
    ///
    /// Example: gatehouse renew $SID
    Renew {
        /// Session id.
        session: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List your sessions, including closed and faulted ones still retained.
    ///
    /// Example: gatehouse sessions
    Sessions {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Close a session. Closing again reports it was already closed.
    ///
    /// Example: gatehouse close $SID
    Close {
        /// Session id.
        session: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Replace a session's instance, keeping its id, lease and events.
    ///
    /// Restores the last state snapshot unless --fresh (stateful plugins).
    /// Example: gatehouse restart $SID
    Restart {
        /// Session id.
        session: String,
        /// Start from a fresh instance, not the last snapshot.
        #[arg(long)]
        fresh: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Move a session to another loaded version of its backend.
    ///
    /// The plugin's state moves through snapshot and restore; a refused
    /// restore leaves the session on its version.
    /// Example: gatehouse upgrade $SID 2.0.0
    Upgrade {
        /// Session id.
        session: String,
        /// The version ("2.0.0" or "sha256:<prefix>"); the current one if
        /// left out.
        version: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Write and check plugins.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Make API keys, and manage a running gateway's key store.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Load a running gateway and report throughput and latency percentiles.
    ///
    /// Example: gatehouse bench --backend echo --mode churn --churn-after 10 -c 8 --duration 10s
    Bench {
        /// Backend to open sessions on.
        #[arg(long, default_value = "echo")]
        backend: String,
        /// How sessions are used.
        #[arg(long, value_enum, default_value = "reuse")]
        mode: gatehouse::loadgen::Mode,
        /// Virtual users.
        #[arg(long, short = 'c', default_value_t = 1)]
        concurrency: usize,
        /// Run for this long (default 10s unless --count is given).
        #[arg(long)]
        duration: Option<String>,
        /// Stop after this many commands.
        #[arg(long)]
        count: Option<u64>,
        /// Command to invoke.
        #[arg(long, default_value = "echo")]
        command: String,
        /// Payload text (default: --payload-size bytes of 'x').
        #[arg(long)]
        payload: Option<String>,
        /// Payload size when --payload is not given.
        #[arg(long, default_value_t = 16)]
        payload_size: usize,
        /// churn mode: commands per session before it is replaced.
        #[arg(long, default_value_t = 10)]
        churn_after: u64,
        /// pool mode: sessions in the shared pool.
        #[arg(long, default_value_t = 4)]
        pool_size: usize,
        /// Attach an event stream to every session and time event delivery.
        #[arg(long)]
        subscribe: bool,
        /// Run this mode first, then --mode, and print the ratio of their
        /// throughputs (e.g. `--mode per-request --compare reuse`).
        #[arg(long, value_enum)]
        compare: Option<gatehouse::loadgen::Mode>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run a built-in native worker (started by the gateway, not by hand).
    #[command(hide = true)]
    Worker {
        /// The built-in worker: sim-device.
        name: String,
    },
    /// Print a shell completion script.
    ///
    /// Example: gatehouse completions bash > ~/.local/share/bash-completion/completions/gatehouse
    ///
    /// zsh: gatehouse completions zsh > "${fpath[1]}/_gatehouse"; fish: gatehouse
    /// completions fish > ~/.config/fish/completions/gatehouse.fish
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
pub(crate) enum PluginCmd {
    /// Write a ready-to-build plugin project in a new directory NAME.
    ///
    /// Example: gatehouse plugin new hello && cd hello && cargo build --release
    /// (or --lang python, --lang js: the last line printed says how to build)
    New {
        /// Project and backend name.
        name: String,
        /// Language of the template: rust, python (componentize-py) or js
        /// (componentize-js).
        #[arg(long, default_value = "rust", value_parser = ["rust", "python", "js"])]
        lang: String,
    },
    /// Check that a .wasm file is a gatehouse:backend component, list its
    /// imports and what each does here, say what to change when the gateway
    /// cannot run it, and time its compilation (into the compile cache, so
    /// the gateway then loads it without compiling).
    ///
    /// Example: gatehouse plugin check target/wasm32-wasip2/release/hello.wasm
    Check {
        /// The component file.
        file: PathBuf,
        /// Compile with this gateway config's [server] settings and
        /// cache_dir (default: the built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Compile afresh; neither read nor fill the compile cache.
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        output: OutputOpts,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysCmd {
    /// Print a new random API key (once) and the config snippet holding its
    /// hash.
    ///
    /// Example: gatehouse keys new --tenant acme --scope sessions:open,sessions:use
    New {
        /// The tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// Scopes: sessions:open, sessions:use, sessions:read, backends:read,
        /// admin (repeatable or comma-separated).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A label for the key in logs.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        output: OutputOpts,
    },
    /// Create a key in a running gateway's key store and print it (once).
    /// Needs an admin key; the new key works at once (and within seconds
    /// on other gateways sharing the store).
    ///
    /// Example: gatehouse keys create --tenant acme --scope sessions:open,sessions:use --expires 30d --key $ADMIN_KEY
    Create {
        /// A tenant of the gateway's config.
        #[arg(long)]
        tenant: String,
        /// Scopes: sessions:open, sessions:use, sessions:read, backends:read,
        /// admin (repeatable or comma-separated).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
        /// The key stops working this long from now, e.g. 30d, 12h.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List a running gateway's keys: the key store's and the config file's
    /// (never their hashes). Needs an admin key.
    ///
    /// Example: gatehouse keys list --all --key $ADMIN_KEY
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// Also list revoked and expired keys.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a key of the key store: it is refused from the next call on.
    /// Needs an admin key.
    ///
    /// Example: gatehouse keys revoke key_3f9a0c1d2e4b5a69 --key $ADMIN_KEY
    Revoke {
        /// The key's id, as `keys list` shows it.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConfigCmd {
    /// Validate a config file; prints the first problem, naming its key.
    ///
    /// Example: gatehouse config check gatehouse.toml
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// Parses the command line, keeping the matches: which options were typed
/// (rather than taken from the environment or a default) decides how the
/// client options given before and after a command combine.
pub(crate) fn parse_args() -> Result<(Args, ArgMatches), clap::Error> {
    let matches = Args::command().try_get_matches()?;
    let args = Args::from_arg_matches(&matches)?;
    Ok((args, matches))
}

/// The matches of the innermost subcommand.
pub(crate) fn leaf_matches(matches: &ArgMatches) -> &ArgMatches {
    match matches.subcommand() {
        Some((_, sub)) => leaf_matches(sub),
        None => matches,
    }
}

/// Refuses client options typed before a command they do nothing for
/// (`gatehouse --addr X serve`), rather than ignoring them.
pub(crate) fn check_client_options_placement(
    command: &Cmd,
    matches: &ArgMatches,
) -> Result<(), String> {
    if command.takes_client_opts() {
        return Ok(());
    }
    let typed = CLIENT_OPTION_IDS
        .iter()
        .filter(|id| !(**id == "json" && command.takes_json()))
        .find(|id| matches.value_source(id) == Some(ValueSource::CommandLine));
    match typed {
        Some(id) => Err(format!(
            "--{} is an option of the client commands; `{}` does not take it",
            id.replace('_', "-"),
            leaf_name(matches),
        )),
        None => Ok(()),
    }
}

/// The command as typed, e.g. `plugin new`.
pub(crate) fn leaf_name(matches: &ArgMatches) -> String {
    let mut names = Vec::new();
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        names.push(name);
        m = sub;
    }
    names.join(" ")
}

impl Cmd {
    /// The client options of a client command (`None` for the others).
    pub(crate) fn client_opts_mut(&mut self) -> Option<&mut ClientOpts> {
        match self {
            Cmd::Backends { client }
            | Cmd::Reload { client, .. }
            | Cmd::Drain { client, .. }
            | Cmd::Sessions { client }
            | Cmd::Open { client, .. }
            | Cmd::Invoke { client, .. }
            | Cmd::Call { client, .. }
            | Cmd::Events { client, .. }
            | Cmd::Session { client, .. }
            | Cmd::Renew { client, .. }
            | Cmd::Close { client, .. }
            | Cmd::Restart { client, .. }
            | Cmd::Upgrade { client, .. }
            | Cmd::Bench { client, .. }
            | Cmd::Keys(
                KeysCmd::Create { client, .. }
                | KeysCmd::List { client, .. }
                | KeysCmd::Revoke { client, .. },
            ) => Some(client),
            Cmd::Keys(KeysCmd::New { .. })
            | Cmd::Serve { .. }
            | Cmd::Config(_)
            | Cmd::Plugin(_)
            | Cmd::Worker { .. }
            | Cmd::Completions { .. } => None,
        }
    }

    pub(crate) fn takes_client_opts(&self) -> bool {
        matches!(
            self,
            Cmd::Backends { .. }
                | Cmd::Reload { .. }
                | Cmd::Drain { .. }
                | Cmd::Sessions { .. }
                | Cmd::Open { .. }
                | Cmd::Invoke { .. }
                | Cmd::Call { .. }
                | Cmd::Events { .. }
                | Cmd::Session { .. }
                | Cmd::Renew { .. }
                | Cmd::Close { .. }
                | Cmd::Restart { .. }
                | Cmd::Upgrade { .. }
                | Cmd::Bench { .. }
                | Cmd::Keys(KeysCmd::Create { .. } | KeysCmd::List { .. } | KeysCmd::Revoke { .. })
        )
    }

    /// Whether a command that is not a client command still prints JSON
    /// with `--json`.
    pub(crate) fn takes_json(&self) -> bool {
        matches!(
            self,
            Cmd::Plugin(PluginCmd::Check { .. }) | Cmd::Keys(KeysCmd::New { .. })
        )
    }
}
