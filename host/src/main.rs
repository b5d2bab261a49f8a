//! The `gatehouse` command: the server (`serve`), config checks, and a small
//! gRPC client for trying sessions from a terminal.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use gatehouse::cli::{self, CliError, Client};
use gatehouse::config::Config;
use gatehouse::server::telemetry::LogFormat;

mod args;

use self::args::*;

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
                gatehouse::server::preflight::check(&c)
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
                    println!(
                        "next: cd {} && {}",
                        root.display(),
                        gatehouse::scaffold::next_step(&lang, &name)
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        Cmd::Plugin(PluginCmd::Check {
            file,
            config,
            no_cache,
            output,
        }) => gatehouse::server::plugin_check::run(
            &file,
            &gatehouse::server::plugin_check::CheckSettings {
                config: config.as_deref(),
                no_cache,
                json: before.json || output.json,
            },
        ),
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
        | Cmd::Keys(_)
        | Cmd::Backends { .. }
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
        | Cmd::Bench { .. } => 0,
    }
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
    let source = gatehouse::server::reload::ConfigSource {
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
    let telemetry = match runtime
        .block_on(async { gatehouse::server::telemetry::init(log_format, &log_filter) })
    {
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
            Cmd::Drain { timeout, .. } => c.drain(timeout).await,
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
            } => c.invoke(session, command, read_payload(payload)?).await,
            Cmd::Call {
                backend,
                command,
                payload,
                config,
                command_timeout,
                ..
            } => {
                let payload = read_payload(payload)?;
                c.call(backend, command, payload, config, command_timeout)
                    .await
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
            Cmd::Restart { session, fresh, .. } => c.restart(session, !fresh).await,
            Cmd::Upgrade {
                session, version, ..
            } => c.upgrade(session, version.unwrap_or_default()).await,
            Cmd::Keys(KeysCmd::Create {
                tenant,
                scopes,
                name,
                expires,
                ..
            }) => c.create_key(tenant, scopes, name, expires).await,
            Cmd::Keys(KeysCmd::List { tenant, all, .. }) => c.list_keys(tenant, all).await,
            Cmd::Keys(KeysCmd::Revoke { id, .. }) => c.revoke_key(id).await,
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
                compare,
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
                c.bench(
                    gatehouse::loadgen::BenchOptions {
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
                    },
                    compare,
                )
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

/// A payload argument: its text, stdin for "-", empty when absent.
fn read_payload(payload: Option<String>) -> Result<Vec<u8>, CliError> {
    Ok(match payload.as_deref() {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::Usage(format!("reading stdin: {e}")))?;
            buf
        }
        Some(p) => p.as_bytes().to_vec(),
        None => Vec::new(),
    })
}
