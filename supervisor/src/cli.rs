//! Command line of `pv-xconnect` (clap derive, BEHAVIOUR §1 and §6).
//!
//! Every value is checked here, against the range its help shows
//! (`cli/ranges.rs`), by a value parser that cannot panic
//! (`cli/values.rs`); a bad one is a clap error (exit 2) naming the flag,
//! the value and the range. Nothing past this module sees a value it would
//! have to refuse, or one that overflows a deadline (`Instant + Duration`
//! panics) in the supervisor or a worker.

use crate::daemon::DEFAULT_DRAIN;
use crate::policy::BackoffPolicy;
use crate::policy::{RestartPolicy, DEFAULT_BACKOFF_FACTOR, DEFAULT_BACKOFF_POLICY};
use crate::source::{DEFAULT_CTRL_SOCKET, DEFAULT_POLL_INTERVAL};
pub use crate::status_cli::Show;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use proto::limits::{default, MAX_PIPE_SIZE};
use ranges::{
    show, CONNS, COUNT, DELAY, FACTOR, HEALTH_COUNT, HEALTH_INTERVAL, POLL, TIMEOUT_OR_NEVER,
    WINDOW,
};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use values::{backoff_factor, backoff_policy, count, duration_in, pipe_sizes, show_backoff, shown};

mod ranges;
mod values;

const AFTER_HELP: &str = "\
Durations: 250ms, 5s, 1.5s, 2m, 1h; a bare number is seconds.
A value out of its range, or not a value of its kind, is refused with exit status 2.
The restart policy follows Pantavisor's auto-recovery (retry_delay, backoff_factor,
max_delay, reset_window, max_retries, backoff_policy): a crashed worker, or an
endpoint that could not be made, is retried after retry-delay * backoff-factor^(n-1),
at most max-delay; after max-retries failures in a row (0 = never give up),
backoff-policy says: `never` (stay failed until the next graph) or DURATION (wait,
then start over with a fresh count).";

#[derive(Parser, Debug)]
#[command(
    name = "pv-xconnect",
    version,
    about = "Pantavisor ingress and cross-connect daemon",
    override_usage = "\
pv-xconnect [run] [--graph FILE | --ctrl-socket PATH] [OPTIONS]
       pv-xconnect check [--json] FILE
       pv-xconnect status [--json | --metrics] [--status-socket PATH]",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// `run`'s options, also taken without the word `run`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run the supervisor (the default command)
    #[command(
        override_usage = "pv-xconnect [run] [--graph FILE | --ctrl-socket PATH] [OPTIONS]",
        after_help = AFTER_HELP
    )]
    Run(Box<RunArgs>),
    /// Validate a graph and print the endpoint plan (exit 0, 1 or 2)
    ///
    /// Exit status 0 when every link is applied or skipped as unsupported (dbus,
    /// drm, wayland, ...), 1 when a link is refused, 2 when FILE is not a graph
    /// (unreadable, not JSON, not an array).
    #[command(
        verbatim_doc_comment,
        override_usage = "pv-xconnect check [--json] FILE"
    )]
    Check {
        /// Print the plan as JSON (endpoints with routes, refused and skipped links)
        #[arg(long)]
        json: bool,
        /// The graph: a JSON array of links, as GET /xconnect-graph serves it
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show the running supervisor's endpoints, workers and refused links
    #[command(override_usage = "pv-xconnect status [--json | --metrics] [--status-socket PATH]")]
    Status {
        /// Print the status document as JSON
        #[arg(long)]
        json: bool,
        /// Print the Prometheus metrics text (GET /metrics): a device's
        /// shell has no HTTP client for a unix socket, this is one
        #[arg(long, conflicts_with = "json", verbatim_doc_comment)]
        metrics: bool,
        /// Status socket of the supervisor to ask
        #[arg(long, value_name = "PATH", default_value = crate::status_server::DEFAULT_PATH)]
        status_socket: PathBuf,
    },
}

/// Options of `run`. A ranged flag's help names its range (`ranges.rs`)
/// and its value parser checks against that same constant; a default is
/// shown from the figure clap applies.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RunArgs {
    /// Read the graph from FILE (re-read on SIGHUP and when it changes)
    #[arg(long, value_name = "FILE", conflicts_with = "ctrl_socket")]
    pub graph: Option<PathBuf>,
    // The default is applied where the source is chosen (entry.rs), and
    // shown here from the same constant.
    #[arg(long, value_name = "PATH", help = format!(
        "Read the graph from Pantavisor's control socket, GET /xconnect-graph\n\
         (the default source) [default: {DEFAULT_CTRL_SOCKET}]"))]
    pub ctrl_socket: Option<PathBuf>,
    #[arg(long, allow_hyphen_values = true, value_name = "SECS",
          default_value = shown(show(DEFAULT_POLL_INTERVAL)),
          help = format!("Control socket poll interval; {POLL}"),
          value_parser = duration_in(POLL))]
    pub poll_interval: Duration,
    /// Status socket (mode 0600)
    #[arg(long, value_name = "PATH", default_value = crate::status_server::DEFAULT_PATH)]
    pub status_socket: PathBuf,
    /// Where logs go: auto (syslog when /dev/log exists, else stderr),
    /// syslog or stderr
    #[arg(long, value_name = "T", default_value = "auto", verbatim_doc_comment,
          value_parser = ["auto", "syslog", "stderr"])]
    pub log_target: String,
    /// Least severe level logged
    #[arg(long, value_name = "L", default_value = "info",
          value_parser = ["error", "warn", "info", "debug"])]
    pub log_level: String,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(RestartPolicy::default().retry_delay)),
          help = format!("First restart delay of a crashed worker; {DELAY}"),
          value_parser = duration_in(DELAY))]
    pub retry_delay: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "F",
          default_value = shown(DEFAULT_BACKOFF_FACTOR.to_string()),
          help = format!("Each consecutive failure multiplies the delay by F; {FACTOR}"),
          value_parser = backoff_factor)]
    pub backoff_factor: f64,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(RestartPolicy::default().max_delay)),
          help = format!("Upper bound of the restart delay; {DELAY}, not below --retry-delay"),
          value_parser = duration_in(DELAY))]
    pub max_delay: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(RestartPolicy::default().reset_window)),
          help = format!("A worker up this long has its backoff start over; {WINDOW}\n\
                          (0: every failure counts as a first one)"),
          value_parser = duration_in(WINDOW))]
    pub reset_window: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "N",
          default_value = shown(RestartPolicy::default().max_retries.to_string()),
          help = format!("Failures in a row before --backoff-policy applies; {COUNT}\n\
                          (0: retry for ever)"),
          value_parser = count::<u32>(COUNT, ""))]
    pub max_retries: u32,
    #[arg(long, allow_hyphen_values = true, value_name = "never|DURATION",
          default_value = shown(show_backoff(DEFAULT_BACKOFF_POLICY)),
          help = format!("After --max-retries failures in a row: `never` (stay failed until the\n\
                          graph is applied again) or a DURATION of {DELAY} (wait that long,\n\
                          then start over with a fresh count)"),
          value_parser = backoff_policy(DELAY))]
    pub backoff_policy: BackoffPolicy,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(DEFAULT_DRAIN)),
          help = format!("How long a removed endpoint's connections may finish; {WINDOW}"),
          value_parser = duration_in(WINDOW))]
    pub drain_timeout: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(default::CONNECT_TIMEOUT)),
          help = format!("Backend connect timeout; {DELAY}"),
          value_parser = duration_in(DELAY))]
    pub connect_timeout: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(default::HEAD_TIMEOUT)),
          help = format!("http: the whole request head must arrive within D, else 408; {DELAY}"),
          value_parser = duration_in(DELAY))]
    pub head_timeout: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(default::IDLE_TIMEOUT)),
          help = format!("http: idle keep-alive connections close after D; {DELAY}"),
          value_parser = duration_in(DELAY))]
    pub idle_timeout: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(default::RESPONSE_TIMEOUT)),
          help = format!("http: a backend must start its response within D, else 504; {DELAY}"),
          value_parser = duration_in(DELAY))]
    pub response_timeout: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(default::TCP_IDLE_TIMEOUT)),
          help = format!("tcp: close connections idle this long; {TIMEOUT_OR_NEVER}"),
          value_parser = duration_in(TIMEOUT_OR_NEVER))]
    pub tcp_idle_timeout: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "N",
          default_value = shown(default::MAX_CONNS.to_string()),
          help = format!("Most concurrent connections per worker; {CONNS}"),
          value_parser = count::<usize>(CONNS, ""))]
    pub max_conns: usize,
    #[arg(long, allow_hyphen_values = true, value_name = "BYTES",
          default_value = shown(default::PIPE_SIZE.to_string()),
          help = format!("Size of each relay pipe; a connection holds at most 2, so 2 x BYTES\n\
                          bounds its kernel memory; a page to {} MiB (at most fs.pipe-max-size)",
                         MAX_PIPE_SIZE >> 20),
          value_parser = count::<usize>(pipe_sizes(), " bytes"))]
    pub pipe_size: usize,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(default::HOLD_TIMEOUT)),
          help = format!("Hold a connection whose backend cannot be reached (refused,\n\
                          unreachable, socket missing) and retry for up to D before the error;\n\
                          {}", TIMEOUT_OR_NEVER.noted(": ~375 ms of retries, then refuse or 502")),
          value_parser = duration_in(TIMEOUT_OR_NEVER))]
    pub hold_timeout: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "N",
          default_value = shown(default::MAX_HELD.to_string()),
          help = format!("Most connections one worker holds at once; beyond it, the error at\n\
                          once; {COUNT}"),
          value_parser = count::<usize>(COUNT, ""))]
    pub max_held: usize,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(default::HEALTH_INTERVAL)),
          help = format!("L4 health checks: each backend is checked with a connect every D;\n\
                          {HEALTH_INTERVAL}"),
          value_parser = duration_in(HEALTH_INTERVAL))]
    pub health_interval: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "D",
          default_value = shown(show(default::HEALTH_TIMEOUT)),
          help = format!("A health check not connected within D fails; {DELAY}"),
          value_parser = duration_in(DELAY))]
    pub health_timeout: Duration,
    #[arg(long, allow_hyphen_values = true, value_name = "N",
          default_value = shown(default::HEALTH_FALL.to_string()),
          help = format!("Failures in a row (checks or real connections) that mark a backend\n\
                          down; {HEALTH_COUNT}"),
          value_parser = count::<u32>(HEALTH_COUNT, ""))]
    pub health_fall: u32,
    #[arg(long, allow_hyphen_values = true, value_name = "N",
          default_value = shown(default::HEALTH_RISE.to_string()),
          help = format!("Successful checks in a row that mark a down backend up; {HEALTH_COUNT}"),
          value_parser = count::<u32>(HEALTH_COUNT, ""))]
    pub health_rise: u32,
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<RunArgs>),
    Check { file: PathBuf, json: bool },
    Status { show: Show, socket: PathBuf },
}

/// Parse the whole argv (argv[0] first). `--help` and `--version` come
/// back as errors of their kind: `Error::exit` prints them on stdout with
/// status 0, and real errors on stderr with status 2.
pub fn parse<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = Cli::command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.with_cmd(&cmd))?;
    let run = match cli.command {
        None => Box::new(cli.run),
        Some(Sub::Run(a)) => a,
        Some(Sub::Check { file, json }) => return Ok(Command::Check { file, json }),
        Some(Sub::Status {
            json,
            metrics,
            status_socket,
        }) => {
            let show = match (json, metrics) {
                (true, _) => Show::Json,
                (_, true) => Show::Metrics,
                _ => Show::Table,
            };
            return Ok(Command::Status {
                show,
                socket: status_socket,
            });
        }
    };
    // The one rule between two flags (RestartPolicy::validate says it too,
    // but by then it is too late for exit status 2).
    if run.max_delay < run.retry_delay {
        return Err(cmd.error(
            ErrorKind::ArgumentConflict,
            format!(
                "--max-delay ({}) must not be below --retry-delay ({})",
                show(run.max_delay),
                show(run.retry_delay)
            ),
        ));
    }
    Ok(Command::Run(run))
}

#[cfg(test)]
mod tests;
