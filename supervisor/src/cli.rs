//! Command line of `pv-xconnect` (clap derive, BEHAVIOUR §1 and §6).
//!
//! Every value is checked here, against a range written in its help, by a
//! value parser that cannot panic (`cli/values.rs`); a bad one is a clap
//! error (exit 2) naming the flag, the value and the range. Nothing past
//! this module sees a value it would have to refuse, or one that overflows
//! a deadline (`Instant + Duration` panics) in the supervisor or a worker.

use crate::policy::BackoffPolicy;
use crate::policy::{RestartPolicy, DEFAULT_BACKOFF_FACTOR, DEFAULT_BACKOFF_POLICY};
pub use crate::status_cli::Show;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use proto::limits::default;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use values::{
    backoff_factor, backoff_policy, count, duration_in, page_size, pipe_max, show_backoff, shown,
    DAY, FLOOR,
};
pub use values::{show, DEFAULT_PIPE_SIZE, MAX_PIPE_SIZE};

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

/// Options of `run`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RunArgs {
    /// Read the graph from FILE (re-read on SIGHUP and when it changes)
    #[arg(long, value_name = "FILE", conflicts_with = "ctrl_socket")]
    pub graph: Option<PathBuf>,
    /// Read the graph from Pantavisor's control socket, GET /xconnect-graph
    /// (the default source) [default: /run/pantavisor/pv/pv-ctrl]
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub ctrl_socket: Option<PathBuf>,
    /// Control socket poll interval; 100ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "SECS", default_value = "5s",
          value_parser = duration_in(Duration::from_millis(100), DAY, None))]
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
    /// First restart delay of a crashed worker; 10ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(RestartPolicy::default().retry_delay)),
          value_parser = duration_in(FLOOR, DAY, None))]
    pub retry_delay: Duration,
    /// Each consecutive failure multiplies the delay by F; 1 to 100
    #[arg(long, allow_hyphen_values = true, value_name = "F", default_value = shown(DEFAULT_BACKOFF_FACTOR.to_string()), value_parser = backoff_factor)]
    pub backoff_factor: f64,
    /// Upper bound of the restart delay; 10ms to 24h, not below --retry-delay
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(RestartPolicy::default().max_delay)),
          value_parser = duration_in(FLOOR, DAY, None))]
    pub max_delay: Duration,
    /// A worker up this long has its backoff start over; 0 to 24h
    /// (0: every failure counts as a first one)
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(RestartPolicy::default().reset_window)), verbatim_doc_comment,
          value_parser = duration_in(Duration::ZERO, DAY, None))]
    pub reset_window: Duration,
    /// Failures in a row before --backoff-policy applies; 0 to 1000000
    /// (0: retry for ever)
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = shown(RestartPolicy::default().max_retries.to_string()), verbatim_doc_comment,
          value_parser = count::<u32>(0, 1_000_000, ""))]
    pub max_retries: u32,
    /// After --max-retries failures in a row: `never` (stay failed until the
    /// graph is applied again) or a DURATION of 10ms to 24h (wait that long,
    /// then start over with a fresh count)
    #[arg(long, allow_hyphen_values = true, value_name = "never|DURATION", default_value = shown(show_backoff(DEFAULT_BACKOFF_POLICY)), verbatim_doc_comment,
          value_parser = backoff_policy)]
    pub backoff_policy: BackoffPolicy,
    /// How long a removed endpoint's connections may finish; 0 to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = "10s",
          value_parser = duration_in(Duration::ZERO, DAY, None))]
    pub drain_timeout: Duration,
    /// Backend connect timeout; 10ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(default::CONNECT_TIMEOUT)),
          value_parser = duration_in(FLOOR, DAY, None))]
    pub connect_timeout: Duration,
    /// http: the whole request head must arrive within D, else 408; 10ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(default::HEAD_TIMEOUT)),
          value_parser = duration_in(FLOOR, DAY, None))]
    pub head_timeout: Duration,
    /// http: idle keep-alive connections close after D; 10ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(default::IDLE_TIMEOUT)),
          value_parser = duration_in(FLOOR, DAY, None))]
    pub idle_timeout: Duration,
    /// http: a backend must start its response within D, else 504; 10ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(default::RESPONSE_TIMEOUT)),
          value_parser = duration_in(FLOOR, DAY, None))]
    pub response_timeout: Duration,
    /// tcp: close connections idle this long; 0 (never) or 10ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(default::TCP_IDLE_TIMEOUT)),
          value_parser = duration_in(FLOOR, DAY, Some("never")))]
    pub tcp_idle_timeout: Duration,
    /// Most concurrent connections per worker; 1 to 1000000
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = shown(default::MAX_CONNS.to_string()),
          value_parser = count::<usize>(1, 1_000_000, ""))]
    pub max_conns: usize,
    /// Size of each relay pipe; a connection holds at most 2, so 2 x BYTES
    /// bounds its kernel memory; a page to 1 MiB (at most fs.pipe-max-size)
    #[arg(long, allow_hyphen_values = true, value_name = "BYTES", default_value = shown(default::PIPE_SIZE.to_string()), verbatim_doc_comment,
          value_parser = count::<usize>(page_size(), pipe_max(), " bytes"))]
    pub pipe_size: usize,
    /// Hold a connection whose backend cannot be reached (refused,
    /// unreachable, socket missing) and retry for up to D before the error;
    /// 0 (never: ~375 ms of retries, then refuse or 502) or 10ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(default::HOLD_TIMEOUT)), verbatim_doc_comment,
          value_parser = duration_in(FLOOR, DAY, Some("never")))]
    pub hold_timeout: Duration,
    /// Most connections one worker holds at once; beyond it, the error at
    /// once; 0 to 1000000
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = shown(default::MAX_HELD.to_string()), verbatim_doc_comment,
          value_parser = count::<usize>(0, 1_000_000, ""))]
    pub max_held: usize,
    /// L4 health checks: each backend is checked with a connect every D;
    /// 0 (no checks) or 100ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(default::HEALTH_INTERVAL)), verbatim_doc_comment,
          value_parser = duration_in(Duration::from_millis(100), DAY, Some("no checks")))]
    pub health_interval: Duration,
    /// A health check not connected within D fails; 10ms to 24h
    #[arg(long, allow_hyphen_values = true, value_name = "D", default_value = shown(show(default::HEALTH_TIMEOUT)),
          value_parser = duration_in(FLOOR, DAY, None))]
    pub health_timeout: Duration,
    /// Failures in a row (checks or real connections) that mark a backend
    /// down; 1 to 1000
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = shown(default::HEALTH_FALL.to_string()), verbatim_doc_comment,
          value_parser = count::<u32>(1, 1000, ""))]
    pub health_fall: u32,
    /// Successful checks in a row that mark a down backend up; 1 to 1000
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = shown(default::HEALTH_RISE.to_string()),
          value_parser = count::<u32>(1, 1000, ""))]
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
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn p(s: &str) -> Result<Command, clap::Error> {
        parse(std::iter::once("pv-xconnect").chain(s.split_whitespace()))
    }

    pub(super) fn run(s: &str) -> RunArgs {
        match p(s) {
            Ok(Command::Run(a)) => *a,
            other => panic!("{s}: {other:?}"),
        }
    }

    pub(super) fn err(s: &str) -> String {
        match p(s) {
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{s}: {e}");
                e.to_string()
            }
            Ok(c) => panic!("{s}: accepted as {c:?}"),
        }
    }

    #[test]
    fn run_is_the_default_and_flags_take_both_forms() {
        let a = run("--graph g.json --retry-delay=50ms --max-retries 3");
        assert_eq!(a.graph, Some(PathBuf::from("g.json")));
        assert_eq!(a.retry_delay, Duration::from_millis(50));
        assert_eq!(a.max_retries, 3);
        assert_eq!(a.max_delay, Duration::from_secs(30));
        assert_eq!(run("run"), run(""));
        assert_eq!(run("run --max-conns 7").max_conns, 7);
        assert!(err("--graph g --ctrl-socket s").contains("cannot be used with"));
        assert!(err("--poll-interval 10ms").contains("100ms to 24h"));
    }

    /// The defaults the help shows are the ones documented in the README
    /// and the ones the rest of the code assumes.
    #[test]
    fn defaults() {
        let a = run("");
        assert_eq!(a.poll_interval, Duration::from_secs(5));
        assert_eq!(
            a.status_socket,
            PathBuf::from(crate::status_server::DEFAULT_PATH)
        );
        assert_eq!(
            (a.log_target.as_str(), a.log_level.as_str()),
            ("auto", "info")
        );
        let policy = crate::policy::RestartPolicy::default();
        assert_eq!(a.retry_delay, policy.retry_delay);
        assert_eq!(a.backoff_factor, policy.backoff_factor);
        assert_eq!(a.max_delay, policy.max_delay);
        assert_eq!(a.reset_window, policy.reset_window);
        assert_eq!(a.max_retries, policy.max_retries);
        assert_eq!(a.backoff_policy, crate::policy::DEFAULT_BACKOFF_POLICY);
        let limits = proto::limits::Limits::default();
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(ms(a.connect_timeout), limits.connect_timeout_ms);
        assert_eq!(ms(a.head_timeout), limits.head_timeout_ms);
        assert_eq!(ms(a.idle_timeout), limits.idle_timeout_ms);
        assert_eq!(ms(a.response_timeout), limits.response_timeout_ms);
        assert_eq!(ms(a.tcp_idle_timeout), limits.tcp_idle_timeout_ms);
        assert_eq!(a.max_conns, limits.max_conns);
        assert_eq!(a.drain_timeout, Duration::from_secs(10));
        assert_eq!(a.pipe_size, DEFAULT_PIPE_SIZE);
        assert_eq!(ms(a.hold_timeout), limits.hold_timeout_ms);
        assert_eq!(a.max_held, limits.max_held);
        assert_eq!(run("--hold-timeout 0").hold_timeout, Duration::ZERO);
        assert!(err("--hold-timeout 5ms").contains("0 (never) or 10ms to 24h"));
        assert_eq!(run("--max-held 0").max_held, 0);
        assert_eq!(ms(a.health_interval), limits.health_interval_ms);
        assert_eq!(ms(a.health_timeout), limits.health_timeout_ms);
        assert_eq!(
            (a.health_fall, a.health_rise),
            (limits.health_fall, limits.health_rise)
        );
        assert_eq!(run("--health-interval 0").health_interval, Duration::ZERO);
        assert!(err("--health-interval 50ms").contains("0 (no checks) or 100ms to 24h"));
    }

    #[test]
    fn subcommands() {
        assert_eq!(
            p("check g.json").unwrap(),
            Command::Check {
                file: "g.json".into(),
                json: false
            }
        );
        assert_eq!(
            p("check --json g.json").unwrap(),
            Command::Check {
                file: "g.json".into(),
                json: true
            }
        );
        assert_eq!(
            p("status --json --status-socket /tmp/s").unwrap(),
            Command::Status {
                show: Show::Json,
                socket: "/tmp/s".into()
            }
        );
        assert_eq!(
            p("status --metrics").unwrap(),
            Command::Status {
                show: Show::Metrics,
                socket: crate::status_server::DEFAULT_PATH.into()
            }
        );
        let e = p("status --json --metrics").unwrap_err();
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::ArgumentConflict, 2));
        let e = p("--help").unwrap_err();
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::DisplayHelp, 0));
        let e = p("--version").unwrap_err();
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::DisplayVersion, 0));
        // Run options belong to run: not before another command.
        err("--graph g check g.json");
        err("check");
        err("check a b");
        err("status --graph g");
    }

    #[test]
    fn errors_name_the_flag() {
        // A negative value is a value (refused with its range), not a flag.
        assert!(err("--retry-delay -1s").contains("10ms to 24h"));
        assert!(err("--max-retries -1").contains("0 to 1000000"));
        assert!(err("--graph").contains("--graph"));
        assert!(err("--bogus").contains("'--bogus'"));
        assert!(err("--bogus=1").contains("'--bogus'"));
        let e = err("--log-target file");
        assert!(e.contains("--log-target") && e.contains("'file'"), "{e}");
        assert!(e.contains("auto, syslog, stderr"), "{e}");
        assert!(err("--log-level trace").contains("--log-level"));
        assert!(err("--max-conns many").contains("--max-conns"));
        assert!(err("--retry-delay 5d").contains("--retry-delay"));
        assert!(err("stray").contains("'stray'"));
    }

    #[test]
    fn durations_have_ranges_and_never_overflow() {
        let e = err("--max-delay 99999999999999999999");
        assert!(
            e.contains("--max-delay") && e.contains("99999999999999999999"),
            "{e}"
        );
        assert!(e.contains("too long"), "{e}");
        let e = err("--max-delay 25h");
        assert!(
            e.contains("out of range: 25h") && e.contains("10ms to 24h"),
            "{e}"
        );
        // The crash loop of issue 9: no zero restart delay.
        let e = err("--retry-delay 0 --max-delay 0");
        assert!(
            e.contains("--retry-delay") && e.contains("10ms to 24h"),
            "{e}"
        );
        let e = err("--retry-delay 9ms");
        assert!(e.contains("out of range: 9ms"), "{e}");
        assert_eq!(run("--retry-delay 10ms").retry_delay, FLOOR);
        let e = err("--retry-delay 2s --max-delay 1s");
        assert!(
            e.contains("--max-delay (1s) must not be below --retry-delay (2s)"),
            "{e}"
        );
        // 0 where it means something, and only there.
        assert_eq!(run("--tcp-idle-timeout 0").tcp_idle_timeout, Duration::ZERO);
        assert!(err("--tcp-idle-timeout 1ms").contains("0 (never) or 10ms to 24h"));
        assert_eq!(run("--reset-window 0s").reset_window, Duration::ZERO);
        assert_eq!(run("--drain-timeout 0").drain_timeout, Duration::ZERO);
        for flag in [
            "--connect-timeout",
            "--head-timeout",
            "--idle-timeout",
            "--response-timeout",
        ] {
            assert!(err(&format!("{flag} 0")).contains(flag), "{flag}");
            assert!(err(&format!("{flag} 1e9h")).contains(flag), "{flag}");
        }
        assert_eq!(
            run("--head-timeout 1.5").head_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(run("--idle-timeout 1h").idle_timeout, HOUR);
        assert_eq!(run("--connect-timeout 24h").connect_timeout, DAY);
    }

    #[test]
    fn help_shows_defaults_ranges_and_the_duration_format() {
        let help = Cli::command().render_help().to_string();
        for want in [
            "--retry-delay <D>",
            "[default: 20ms]",
            "10ms to 24h",
            "--backoff-policy <never|DURATION>",
            "[default: 5m]",
            "--pipe-size <BYTES>",
            "[default: 65536]",
            "Durations: 250ms, 5s, 1.5s, 2m, 1h",
            "check [--json] FILE",
        ] {
            assert!(help.contains(want), "{want} missing from:\n{help}");
        }
    }
}
