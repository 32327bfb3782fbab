//! pv-xconnect: the supervisor. Reads the xconnect graph, creates every
//! listening socket in the right namespace, and runs one worker process per
//! endpoint, restarting crashed workers with backoff. The workers are this
//! same executable, exec'd under their own names (`spawn.rs`).

use crate::{check, cli, daemon, policy, privileges, source, spawn, status_cli};

use cli::{Command, RunArgs};
use policy::RestartPolicy;
use proto::limits::Limits;
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
    // Held from now on: the workers run the executable this supervisor
    // started as, even after an update replaces it on disk.
    let binary = spawn::Binary::open_self()?;
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
        hold_timeout_ms: ms(a.hold_timeout),
        max_held: a.max_held,
        health_interval_ms: ms(a.health_interval),
        health_timeout_ms: ms(a.health_timeout),
        health_fall: a.health_fall,
        health_rise: a.health_rise,
        ..Limits::default()
    };
    let opts = daemon::Options {
        source,
        binary,
        policy,
        limits,
        drain: a.drain_timeout,
        log_target: target.to_string(),
        log_level: a.log_level,
        access_log: a.access_log,
        status_socket: Some(a.status_socket),
    };
    proto::info!(
        "starting (pid {}), capabilities kept: {kept}",
        std::process::id()
    );
    daemon::Daemon::new(opts)?.run()
}

/// The supervisor's process: `pv-xconnect run|check|status ...`.
pub fn main() -> ExitCode {
    // A bad flag: clap's message on stderr, exit 2; --help and --version:
    // stdout, exit 0.
    let cmd = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // clap's model of the command line is gone: hand its heap back
    // before the daemon settles on top of it.
    proto::mem::give_back_heap();
    let result = match cmd {
        Command::Check { file, json } => return check::run(&file, json),
        Command::Status { show, socket } => return status_cli::run(&socket, show),
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
