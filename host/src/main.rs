//! The `gatehouse` command: the server (`serve`), config checks, and a small
//! gRPC client for trying sessions from a terminal.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::cli::{self, CliError, Client};
use gatehouse::config::Config;

/// A gRPC gateway that gives every client session its own sandboxed backend.
#[derive(Parser)]
#[command(name = "gatehouse", version, about)]
struct Args {
    /// Gateway address for the client commands.
    #[arg(
        long,
        global = true,
        env = "GATEHOUSE_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
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
        /// Prometheus listen address (overrides the file); "off" disables it.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// List the backends sessions can be opened on.
    Backends,
    /// Open a session and print its id.
    ///
    /// Example: SID=$(gatehouse open echo --config greeting=hi)
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
    },
    /// Run one command on a session and print its reply.
    ///
    /// Example: gatehouse invoke $SID echo hello
    Invoke {
        /// Session id.
        session: String,
        /// Command name.
        command: String,
        /// Payload text; "-" reads it from stdin.
        payload: Option<String>,
    },
    /// Print a session's events.
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
    },
    /// Describe one session.
    Session {
        /// Session id.
        session: String,
    },
    /// Renew a session's lease.
    Renew {
        /// Session id.
        session: String,
    },
    /// List your sessions.
    Sessions,
    /// Close a session.
    Close {
        /// Session id.
        session: String,
    },
    /// Run a built-in native worker (started by the gateway, not by hand).
    #[command(hide = true)]
    Worker {
        /// The built-in worker: sim-device.
        name: String,
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
    let args = Args::parse();
    let code = match args.command {
        Cmd::Serve {
            config,
            listen,
            metrics_listen,
        } => serve(config, listen, metrics_listen),
        Cmd::Config(ConfigCmd::Check { file }) => match Config::load(&file) {
            Ok(c) => {
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
        Cmd::Worker { name } => return worker(&name),
        other => client(args.addr, args.json, other),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
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

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn serve(config: Option<PathBuf>, listen: Option<SocketAddr>, metrics: Option<String>) -> i32 {
    init_logging();
    let mut config = match config {
        Some(path) => match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return 1;
            }
        },
        None => Config::builtin(),
    };
    if let Some(l) = listen {
        config.server.listen = l;
    }
    match metrics.as_deref() {
        None => {}
        Some("off") => config.server.metrics_listen = None,
        Some(s) => match s.parse() {
            Ok(a) => config.server.metrics_listen = Some(a),
            Err(_) => {
                eprintln!("--metrics-listen: {s:?} is not an address");
                return 64;
            }
        },
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(gatehouse::server::serve(config, |addrs| {
        // One machine-readable line on stdout, for scripts and tests.
        match addrs.metrics {
            Some(m) => println!("gatehouse listening grpc={} metrics={m}", addrs.grpc),
            None => println!("gatehouse listening grpc={}", addrs.grpc),
        }
    }));
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

fn client(addr: String, json: bool, command: Cmd) -> i32 {
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
        let mut c = Client::connect(&addr, json).await?;
        match command {
            Cmd::Backends => c.backends().await,
            Cmd::Open {
                backend,
                config,
                name,
                lease,
                command_timeout,
            } => c.open(backend, config, name, lease, command_timeout).await,
            Cmd::Invoke {
                session,
                command,
                payload,
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
            } => c.events(session, resume_after, count, follow).await,
            Cmd::Session { session } => c.get(session).await,
            Cmd::Renew { session } => c.renew(session).await,
            Cmd::Sessions => c.sessions().await,
            Cmd::Close { session } => c.close(session).await,
            Cmd::Serve { .. } | Cmd::Config(_) | Cmd::Worker { .. } => Ok(0),
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
