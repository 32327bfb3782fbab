//! pv-xconnect: the supervisor. Reads the xconnect graph, creates every
//! listening socket in the right namespace, and runs one worker process per
//! endpoint, restarting crashed workers with backoff.

use supervisor::{cli, daemon, policy, privileges, source, spawn, status_cli};

use cli::{Command, RunArgs};
use policy::RestartPolicy;
use proto::ctl::Limits;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn run(a: Box<RunArgs>) -> Result<(), String> {
    let level = proto::log::Level::parse(&a.log_level).unwrap_or(proto::log::Level::Info);
    let target = proto::log::init("pv-xconnect", &a.log_target, level);
    let policy = RestartPolicy {
        retry_delay: a.retry_delay,
        backoff_factor: a.backoff_factor,
        max_delay: a.max_delay,
        reset_window: a.reset_window,
        max_retries: a.max_retries,
        backoff_policy: a.backoff_policy,
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
        pipe_size: a.pipe_size,
        ..Limits::default()
    };
    let opts = daemon::Options {
        source,
        binaries: spawn::Binaries::new(worker_dir),
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
        opts.binaries.dir().display()
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
    // Names, paths and reasons come from the graph: each line is printed
    // escaped, so none of them can add a line or a control byte.
    let line = |l: String| println!("{}", proto::text::escape(&l));
    for ep in &plan.endpoints {
        line(format!(
            "endpoint {} {} consumer={} worker={}",
            ep.kind,
            ep.key,
            ep.consumer,
            ep.kind.worker_binary()
        ));
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
            line(format!(
                "  link #{} '{}' role={} -> {}{extra}",
                r.link, r.name, r.role, r.backend
            ));
        }
    }
    for r in &plan.refused {
        line(format!("refused {r}"));
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pv-xconnect: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        Command::Help => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("pv-xconnect {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Check(file) => return check(&file),
        Command::Status { json, socket } => return status_cli::run(&socket, json),
        Command::Run(a) => run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            proto::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
