//! pv-xconnect: the supervisor. Reads the xconnect graph, creates every
//! listening socket in the right namespace, and runs one worker process per
//! endpoint, restarting crashed workers with backoff.

mod daemon;
mod endpoint;
mod listener;
mod metrics;
mod policy;
mod privileges;
mod roots;
mod source;
mod spawn;
mod status;
mod status_cli;
mod status_server;

use clap::{Args, Parser, Subcommand};
use policy::{parse_duration, RestartPolicy};
use proto::ctl::Limits;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "pv-xconnect",
    version,
    about = "Pantavisor ingress and cross-connect daemon"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the supervisor (the default).
    Run(Box<RunArgs>),
    /// Validate a graph file and print the endpoint plan; exit 1 if any link is refused.
    Check { file: PathBuf },
    /// Show the running supervisor's endpoints, workers and refused links.
    Status {
        /// Print the raw JSON of `GET /status`.
        #[arg(long)]
        json: bool,
        /// The supervisor's status socket.
        #[arg(long, value_name = "PATH", default_value = status_server::DEFAULT_PATH)]
        status_socket: PathBuf,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Read the graph from this JSON file (re-read on SIGHUP and when it changes).
    #[arg(long, value_name = "FILE", conflicts_with = "ctrl_socket")]
    graph: Option<PathBuf>,
    /// Read the graph from Pantavisor's control socket (GET /xconnect-graph);
    /// the default source when --graph is not given.
    #[arg(long, value_name = "PATH")]
    ctrl_socket: Option<PathBuf>,
    /// How often the control socket is asked for the graph (also at once on SIGHUP).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_interval)]
    poll_interval: Duration,
    /// Where the pvx-worker-* binaries are (default: next to pv-xconnect).
    #[arg(long, value_name = "DIR")]
    worker_dir: Option<PathBuf>,
    /// Serve `GET /status` and `GET /metrics` (HTTP/1.1) on this unix socket (mode 0600).
    #[arg(long, value_name = "PATH", default_value = status_server::DEFAULT_PATH)]
    status_socket: PathBuf,
    /// auto (syslog when /dev/log exists), syslog or stderr.
    #[arg(long, default_value = "auto", value_parser = ["auto", "syslog", "stderr"])]
    log_target: String,
    /// error, warn, info or debug.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug"])]
    log_level: String,
    /// First restart delay of a crashed worker.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    retry_delay: Duration,
    /// Each consecutive crash multiplies the delay by this.
    #[arg(long, default_value_t = 2.0)]
    backoff_factor: f64,
    /// Upper bound of the restart delay.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    max_delay: Duration,
    /// A worker up this long has its backoff start over.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    reset_window: Duration,
    /// Consecutive crashes before giving up on an endpoint (0 = never).
    #[arg(long, default_value_t = 0)]
    max_retries: u32,
    /// How long a removed endpoint's connections may finish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Backend connect timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// http: a request head must be complete within this (else 408).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    head_timeout: Duration,
    /// http: close keep-alive client connections idle this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// http: a backend that got the whole request must start its response
    /// within this (else 504).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    response_timeout: Duration,
    /// Close tcp connections idle this long (0 = never).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    tcp_idle_timeout: Duration,
    /// Most concurrent connections per worker.
    #[arg(long, default_value_t = 4096)]
    max_conns: usize,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!(
            "'{s}' is too short a poll interval (at least 100ms)"
        ));
    }
    Ok(d)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn run(a: RunArgs) -> Result<(), String> {
    let level = proto::log::Level::parse(&a.log_level).unwrap_or(proto::log::Level::Info);
    let target = proto::log::init("pv-xconnect", &a.log_target, level);
    let policy = RestartPolicy {
        retry_delay: a.retry_delay,
        backoff_factor: a.backoff_factor,
        max_delay: a.max_delay,
        reset_window: a.reset_window,
        max_retries: a.max_retries,
    };
    policy.validate()?;
    // Before anything else is opened or started: what we drop now, no
    // worker can inherit later.
    let kept = privileges::drop_unneeded()?;
    privileges::seal_inherited_fds()?;
    let worker_dir = match a.worker_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .ok_or("cannot find the directory of pv-xconnect; use --worker-dir")?,
    };
    let source = match (a.graph, a.ctrl_socket) {
        (Some(file), _) => source::Source::file(file),
        (None, sock) => source::Source::ctrl(
            sock.unwrap_or_else(|| PathBuf::from(source::DEFAULT_CTRL_SOCKET)),
            a.poll_interval,
        ),
    };
    let limits = Limits {
        connect_timeout_ms: ms(a.connect_timeout),
        tcp_idle_timeout_ms: ms(a.tcp_idle_timeout),
        head_timeout_ms: ms(a.head_timeout),
        idle_timeout_ms: ms(a.idle_timeout),
        response_timeout_ms: ms(a.response_timeout),
        max_conns: a.max_conns,
        ..Limits::default()
    };
    let opts = daemon::Options {
        source,
        worker_dir,
        policy,
        limits,
        drain: a.drain_timeout,
        log_target: target.to_string(),
        log_level: a.log_level,
        status_socket: Some(a.status_socket),
    };
    proto::info!(
        "starting (pid {}), workers from {}, capabilities kept: {kept}",
        std::process::id(),
        opts.worker_dir.display()
    );
    daemon::Daemon::new(opts)?.run()
}

fn check(file: &PathBuf) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pv-xconnect check: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let plan = match proto::plan::from_graph(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pv-xconnect check: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    for ep in &plan.endpoints {
        println!(
            "endpoint {} {} consumer={} worker={}",
            ep.kind,
            ep.key,
            ep.consumer,
            ep.kind.worker_binary()
        );
        for r in &ep.routes {
            let mut extra = String::new();
            if ep.kind == proto::plan::Kind::Http {
                extra.push_str(&format!(
                    " prefix={} strip_prefix={}",
                    r.prefix, r.strip_prefix
                ));
                if let Some(h) = &r.host {
                    extra.push_str(&format!(" host={h}"));
                }
            }
            if let Some(s) = &r.sni {
                extra.push_str(&format!(" sni={s}"));
            }
            if let Some(p) = &r.proxy_protocol {
                extra.push_str(&format!(" proxy_protocol={p:?}"));
            }
            println!(
                "  link #{} '{}' role={} -> {}{extra}",
                r.link, r.name, r.role, r.backend
            );
        }
    }
    for r in &plan.refused {
        println!("refused {r}");
    }
    println!(
        "{} endpoint(s), {} link(s) refused",
        plan.endpoints.len(),
        plan.refused.len()
    );
    if plan.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Check { file }) => return check(&file),
        Some(Cmd::Status {
            json,
            status_socket,
        }) => return status_cli::run(&status_socket, json),
        Some(Cmd::Run(a)) => run(*a),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            proto::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
