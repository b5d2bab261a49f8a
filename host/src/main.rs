//! The `gatehouse` command: the server (`serve`), config checks, and a small
//! gRPC client for trying sessions from a terminal.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use gatehouse::cli::{self, CliError, Client};
use gatehouse::config::Config;
use gatehouse::telemetry::LogFormat;

/// A gRPC gateway that gives every client session its own sandboxed backend.
///
/// `gatehouse serve` runs the gateway; the other commands are a small client
/// for it. Try: gatehouse serve & SID=$(gatehouse open echo); gatehouse invoke $SID count
#[derive(Parser)]
#[command(name = "gatehouse", version, about, long_about)]
struct Args {
    /// Given before the command; the same options after a client command
    /// win over these.
    #[command(flatten)]
    client: ClientOpts,
    #[command(subcommand)]
    command: Cmd,
}

/// How the client commands reach the gateway. Accepted before the command
/// (`gatehouse --addr X backends`) and after a client command (`gatehouse
/// backends --addr X`), and listed only where they mean something.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Client options")]
struct ClientOpts {
    /// Gateway address for the client commands.
    #[arg(
        long,
        env = "GATEHOUSE_ADDR",
        hide_env_values = true,
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    /// API key for the client commands, sent as `authorization: Bearer KEY`
    /// (not needed in local development mode).
    #[arg(long, env = "GATEHOUSE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// CA certificate (PEM) to trust for an https:// gateway, instead of
    /// the system's roots.
    #[arg(
        long,
        env = "GATEHOUSE_CA_CERT",
        hide_env_values = true,
        value_name = "PEM"
    )]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for a gateway that asks for one (mTLS).
    #[arg(
        long,
        env = "GATEHOUSE_CLIENT_CERT",
        hide_env_values = true,
        value_name = "PEM"
    )]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "GATEHOUSE_CLIENT_KEY",
        hide_env_values = true,
        value_name = "PEM"
    )]
    client_key: Option<PathBuf>,
    #[command(flatten)]
    output: OutputOpts,
}

/// The ids of [`ClientOpts`]' options, as clap names them.
const CLIENT_OPTION_IDS: [&str; 6] = [
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
    fn merge(self, after: ClientOpts, matches: &ArgMatches) -> ClientOpts {
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
struct OutputOpts {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
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
    /// Write and check plugins.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Make API keys.
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
enum PluginCmd {
    /// Write a ready-to-build plugin project in a new directory NAME.
    ///
    /// Example: gatehouse plugin new hello && cd hello && cargo build --release
    New {
        /// Project and backend name.
        name: String,
        /// Language of the template.
        #[arg(long, default_value = "rust")]
        lang: String,
    },
    /// Check that a .wasm file is a gatehouse:backend component, list its
    /// imports and the grants they need, and time its compilation.
    ///
    /// Example: gatehouse plugin check target/wasm32-wasip2/release/hello.wasm
    Check {
        /// The component file.
        file: PathBuf,
        #[command(flatten)]
        output: OutputOpts,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
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
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file; prints the first problem, naming its key.
    ///
    /// Example: gatehouse config check gatehouse.toml
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    // A native worker's start-up is on the path of every cold open: skip
    // building the whole command-line parser for it.
    let mut argv = std::env::args_os().skip(1);
    if let (Some(cmd), Some(name), None) = (argv.next(), argv.next(), argv.next())
        && cmd == "worker"
        && let Some(name) = name.to_str()
        && !name.starts_with('-')
    {
        return worker(name);
    }
    let (args, matches) = match parse_args() {
        Ok(parsed) => parsed,
        // Help and version are not errors. Every other parse failure is a
        // bad argument, 64 like the CLI's own checks: clap's default, 2,
        // is the code the CLI keeps for gRPC errors.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let Args {
        client: before,
        mut command,
    } = args;
    if !matches!(command, Cmd::Serve { .. } | Cmd::Worker { .. }) {
        // A command's output piped into `head` ends like any Unix tool's
        // when the reader goes (SIGPIPE), not with a panic in println!.
        // Sockets are unaffected: Rust writes them with MSG_NOSIGNAL. The
        // server keeps SIGPIPE ignored.
        // SAFETY: restoring a default signal disposition at start-up,
        // before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = check_client_options_placement(&command, &matches) {
        eprintln!("error: {e}");
        return ExitCode::from(64);
    }
    if let Cmd::Worker { name } = &command {
        return worker(name);
    }
    let after_matches = leaf_matches(&matches);
    let code = match command.client_opts_mut() {
        Some(after) => {
            let after = std::mem::take(after);
            client(before.merge(after, after_matches), command)
        }
        None => run_local(before.output, command),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Parses the command line, keeping the matches: which options were typed
/// (rather than taken from the environment or a default) decides how the
/// client options given before and after a command combine.
fn parse_args() -> Result<(Args, ArgMatches), clap::Error> {
    let matches = Args::command().try_get_matches()?;
    let args = Args::from_arg_matches(&matches)?;
    Ok((args, matches))
}

/// The matches of the innermost subcommand.
fn leaf_matches(matches: &ArgMatches) -> &ArgMatches {
    match matches.subcommand() {
        Some((_, sub)) => leaf_matches(sub),
        None => matches,
    }
}

/// Refuses client options typed before a command they do nothing for
/// (`gatehouse --addr X serve`), rather than ignoring them.
fn check_client_options_placement(command: &Cmd, matches: &ArgMatches) -> Result<(), String> {
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
fn leaf_name(matches: &ArgMatches) -> String {
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
    fn client_opts_mut(&mut self) -> Option<&mut ClientOpts> {
        match self {
            Cmd::Backends { client }
            | Cmd::Reload { client, .. }
            | Cmd::Sessions { client }
            | Cmd::Open { client, .. }
            | Cmd::Invoke { client, .. }
            | Cmd::Events { client, .. }
            | Cmd::Session { client, .. }
            | Cmd::Renew { client, .. }
            | Cmd::Close { client, .. }
            | Cmd::Bench { client, .. } => Some(client),
            Cmd::Serve { .. }
            | Cmd::Config(_)
            | Cmd::Plugin(_)
            | Cmd::Keys(_)
            | Cmd::Worker { .. }
            | Cmd::Completions { .. } => None,
        }
    }

    fn takes_client_opts(&self) -> bool {
        matches!(
            self,
            Cmd::Backends { .. }
                | Cmd::Reload { .. }
                | Cmd::Sessions { .. }
                | Cmd::Open { .. }
                | Cmd::Invoke { .. }
                | Cmd::Events { .. }
                | Cmd::Session { .. }
                | Cmd::Renew { .. }
                | Cmd::Close { .. }
                | Cmd::Bench { .. }
        )
    }

    /// Whether a command that is not a client command still prints JSON
    /// with `--json`.
    fn takes_json(&self) -> bool {
        matches!(
            self,
            Cmd::Plugin(PluginCmd::Check { .. }) | Cmd::Keys(KeysCmd::New { .. })
        )
    }
}

/// The commands that do not talk to a gateway. `before` is the output
/// option given before the command.
fn run_local(before: OutputOpts, command: Cmd) -> i32 {
    match command {
        Cmd::Serve {
            config,
            listen,
            metrics_listen,
            log_format,
            log_filter,
        } => serve(config, listen, metrics_listen, (log_format, log_filter)),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "gatehouse",
                &mut std::io::stdout(),
            );
            0
        }
        Cmd::Config(ConfigCmd::Check { file }) => match Config::load(&file)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                gatehouse::server::preflight(&c)
                    .map(|()| c)
                    .map_err(|e| e.to_string())
            }) {
            Ok(c) => {
                for warning in c.warnings() {
                    eprintln!("{}: warning: {warning}", file.display());
                }
                println!(
                    "{}: ok ({} backend{})",
                    file.display(),
                    c.backends.len(),
                    if c.backends.len() == 1 { "" } else { "s" }
                );
                0
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                1
            }
        },
        Cmd::Plugin(PluginCmd::New { name, lang }) => {
            match gatehouse::scaffold::new_plugin(std::path::Path::new("."), &name, &lang) {
                Ok(root) => {
                    println!("wrote {}", root.display());
                    println!("next: cd {} && cargo build --release", root.display());
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        Cmd::Plugin(PluginCmd::Check { file, output }) => {
            plugin_check(&file, before.json || output.json)
        }
        Cmd::Keys(KeysCmd::New {
            tenant,
            scopes,
            name,
            output,
        }) => match cli::new_key(
            &tenant,
            &scopes,
            name.as_deref(),
            before.json || output.json,
        ) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        },
        // Dispatched before: to `worker` and to `client`.
        Cmd::Worker { .. }
        | Cmd::Backends { .. }
        | Cmd::Reload { .. }
        | Cmd::Sessions { .. }
        | Cmd::Open { .. }
        | Cmd::Invoke { .. }
        | Cmd::Events { .. }
        | Cmd::Session { .. }
        | Cmd::Renew { .. }
        | Cmd::Close { .. }
        | Cmd::Bench { .. } => 0,
    }
}

fn plugin_check(file: &std::path::Path, json: bool) -> i32 {
    use gatehouse::backend::wasm::check::{ImportStatus, check_component};
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return 1;
        }
    };
    let report = match check_component(&bytes) {
        Ok(r) => r,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": e.to_string() })
                );
            } else {
                eprintln!("{}: {e}", file.display());
            }
            return 1;
        }
    };
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["ok"] = report.ok().into();
        println!("{value}");
    } else {
        println!(
            "{}: gatehouse:backend@{} component, {} bytes, compiled in {:.0} ms",
            file.display(),
            report.world_version,
            report.size,
            report.compile_time.as_secs_f64() * 1000.0
        );
        println!("imports:");
        for i in &report.imports {
            let mark = match i.status {
                ImportStatus::Provided => "ok   ",
                ImportStatus::NeedsGrant => "grant",
                ImportStatus::Unsupported => "NO   ",
            };
            println!("  {mark} {:<44} {}", i.name, i.note);
        }
        for e in &report.link_errors {
            println!("cannot run here: {e}");
        }
    }
    if report.ok() { 0 } else { 1 }
}

/// Runs a native worker built into this binary, so the built-in
/// `sim-device` backend needs no separate program.
fn worker(name: &str) -> ExitCode {
    match name {
        gatehouse::builtin::SIM_DEVICE => gatehouse_sim_device::main(),
        other => {
            eprintln!("no built-in worker {other:?} (have: sim-device)");
            ExitCode::from(64)
        }
    }
}

fn serve(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics: Option<String>,
    (log_format, log_filter): (LogFormat, String),
) -> i32 {
    let metrics_listen = match metrics.as_deref() {
        None => None,
        Some("off") => Some(None),
        Some(s) => match s.parse() {
            Ok(a) => Some(Some(a)),
            Err(_) => {
                eprintln!("--metrics-listen: {s:?} is not an address");
                return 64;
            }
        },
    };
    // The source is kept: a reload reads the file again the same way.
    let source = gatehouse::reload::ConfigSource {
        path: config,
        listen,
        metrics_listen,
    };
    let config = match source.read() {
        Ok(Some(c)) => c,
        Ok(None) => {
            let mut c = Config::builtin();
            source.apply(&mut c);
            c
        }
        Err(e) => {
            let path = source
                .path
                .as_deref()
                .unwrap_or(std::path::Path::new("config"));
            eprintln!("{}: {e}", path.display());
            return 1;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    // Inside the runtime: an OTLP exporter needs one.
    let telemetry =
        match runtime.block_on(async { gatehouse::telemetry::init(log_format, &log_filter) }) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("gatehouse: {e}");
                return cli::EXIT_USAGE;
            }
        };
    let result = runtime.block_on(gatehouse::server::serve(config, source, |addrs| {
        // One machine-readable line on stdout, for scripts and tests.
        match addrs.metrics {
            Some(m) => println!("gatehouse listening grpc={} metrics={m}", addrs.grpc),
            None => println!("gatehouse listening grpc={}", addrs.grpc),
        }
    }));
    telemetry.shutdown();
    // Worker tasks may still be unwinding; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            1
        }
    }
}

fn client(opts: ClientOpts, command: Cmd) -> i32 {
    let tls = cli::TlsFiles {
        ca_cert: opts.ca_cert,
        client_cert: opts.client_cert,
        client_key: opts.client_key,
    };
    let (addr, key, json) = (opts.addr, opts.key, opts.output.json);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result: Result<i32, CliError> = runtime.block_on(async move {
        let mut c = Client::connect(&addr, json, key.as_deref(), &tls).await?;
        let json = c.json();
        match command {
            Cmd::Backends { .. } => c.backends().await,
            Cmd::Reload {
                promote, rollback, ..
            } => c.reload(promote, rollback).await,
            Cmd::Open {
                backend,
                config,
                name,
                lease,
                command_timeout,
                ..
            } => c.open(backend, config, name, lease, command_timeout).await,
            Cmd::Invoke {
                session,
                command,
                payload,
                ..
            } => {
                let payload = match payload.as_deref() {
                    Some("-") => {
                        let mut buf = Vec::new();
                        std::io::stdin()
                            .read_to_end(&mut buf)
                            .map_err(|e| CliError::Usage(format!("reading stdin: {e}")))?;
                        buf
                    }
                    Some(p) => p.as_bytes().to_vec(),
                    None => Vec::new(),
                };
                c.invoke(session, command, payload).await
            }
            Cmd::Events {
                session,
                resume_after,
                count,
                follow,
                ..
            } => c.events(session, resume_after, count, follow).await,
            Cmd::Session { session, .. } => c.get(session).await,
            Cmd::Renew { session, .. } => c.renew(session).await,
            Cmd::Sessions { .. } => c.sessions().await,
            Cmd::Close { session, .. } => c.close(session).await,
            Cmd::Bench {
                backend,
                mode,
                concurrency,
                duration,
                count,
                command,
                payload,
                payload_size,
                churn_after,
                pool_size,
                subscribe,
                ..
            } => {
                let duration = duration
                    .map(|d| gatehouse::config::parse_duration(&d))
                    .transpose()
                    .map_err(CliError::Usage)?;
                let payload = payload
                    .map(String::into_bytes)
                    .unwrap_or_else(|| vec![b'x'; payload_size]);
                let progress = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
                c.bench(gatehouse::loadgen::BenchOptions {
                    backend,
                    mode,
                    concurrency,
                    duration,
                    count,
                    command,
                    payload,
                    churn_after,
                    pool_size,
                    subscribe,
                    progress,
                })
                .await
            }

            Cmd::Serve { .. }
            | Cmd::Config(_)
            | Cmd::Completions { .. }
            | Cmd::Plugin(_)
            | Cmd::Keys(_)
            | Cmd::Worker { .. } => Ok(0),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
