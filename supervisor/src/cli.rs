//! Command line of `pv-xconnect`, parsed by hand: a table of flags with
//! their defaults and help. (clap did this in 200 KiB of code; on a device
//! the supervisor's whole text is resident, so it matters.)

use crate::policy::{parse_backoff_policy, parse_duration, BackoffPolicy};
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
pv-xconnect: Pantavisor ingress and cross-connect daemon

usage:
  pv-xconnect [run] [--graph FILE | --ctrl-socket PATH] [options]
  pv-xconnect check FILE         validate a graph, print the endpoint plan; exit 1 on any refused link
  pv-xconnect status [--json] [--status-socket PATH]
  pv-xconnect --help | --version

run options (default in brackets):
  --graph FILE              read the graph from FILE (re-read on SIGHUP and when it changes)
  --ctrl-socket PATH        read it from Pantavisor's control socket, GET /xconnect-graph
                            (the default source) [/run/pantavisor/pv/pv-ctrl]
  --poll-interval SECS      control socket poll interval [5s]
  --status-socket PATH      status socket [/run/pv-xconnect/status.sock]
  --worker-dir DIR          where the pvx-worker-* binaries are [next to pv-xconnect]
  --log-target T            auto (syslog when /dev/log exists), syslog or stderr [auto]
  --log-level L             error, warn, info or debug [info]
  --retry-delay D           first restart delay of a crashed worker [20ms]
  --backoff-factor F        each consecutive crash multiplies the delay [2]
  --max-delay D             upper bound of the restart delay [30s]
  --reset-window D          a worker up this long has its backoff start over [60s]
  --max-retries N           consecutive failures before giving up (0 = never) [0]
  --backoff-policy P        after --max-retries: never (stay failed until the graph is applied
                            again) or a duration to wait, then start over [5m]
  --drain-timeout D         how long a removed endpoint's connections may finish [10s]
  --connect-timeout D       backend connect timeout [5s]
  --head-timeout D          http: the whole request head must arrive within, else 408 [30s]
  --idle-timeout D          http: idle keep-alive connections close after [60s]
  --response-timeout D      http: a backend must start its response within, else 504 [30s]
  --tcp-idle-timeout D      tcp: close connections idle this long (0 = never) [0s]
  --max-conns N             most concurrent connections per worker [4096]
  --pipe-size BYTES         size of each relay pipe; a connection holds at most 2, so
                            2 x BYTES bounds its kernel memory (page size .. 1 MiB,
                            at most /proc/sys/fs/pipe-max-size) [65536]
durations: 250ms, 5s, 1.5s, 2m (a bare number is seconds)
";

#[derive(Debug, Clone, PartialEq)]
pub struct RunArgs {
    pub graph: Option<PathBuf>,
    pub ctrl_socket: Option<PathBuf>,
    pub poll_interval: Duration,
    pub status_socket: PathBuf,
    pub worker_dir: Option<PathBuf>,
    pub log_target: String,
    pub log_level: String,
    pub retry_delay: Duration,
    pub backoff_factor: f64,
    pub max_delay: Duration,
    pub reset_window: Duration,
    pub max_retries: u32,
    pub backoff_policy: BackoffPolicy,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub response_timeout: Duration,
    pub tcp_idle_timeout: Duration,
    pub max_conns: usize,
    pub pipe_size: usize,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            graph: None,
            ctrl_socket: None,
            poll_interval: Duration::from_secs(5),
            status_socket: PathBuf::from(crate::status_server::DEFAULT_PATH),
            worker_dir: None,
            log_target: "auto".into(),
            log_level: "info".into(),
            retry_delay: Duration::from_millis(20),
            backoff_factor: 2.0,
            max_delay: Duration::from_secs(30),
            reset_window: Duration::from_secs(60),
            max_retries: 0,
            backoff_policy: crate::policy::DEFAULT_BACKOFF_POLICY,
            drain_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            head_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(30),
            tcp_idle_timeout: Duration::ZERO,
            max_conns: 4096,
            pipe_size: proto::relay::DEFAULT_PIPE_SIZE,
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<RunArgs>),
    Check(PathBuf),
    Status { json: bool, socket: PathBuf },
    Help,
    Version,
}

fn one_of(flag: &str, v: &str, allowed: &[&str]) -> Result<String, String> {
    if allowed.contains(&v) {
        Ok(v.to_string())
    } else {
        Err(format!(
            "{flag}: '{v}' is not one of {}",
            allowed.join(", ")
        ))
    }
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: '{v}' is not a valid number"))
}

fn duration(flag: &str, v: &str) -> Result<Duration, String> {
    parse_duration(v).map_err(|e| format!("{flag}: {e}"))
}

/// What `--pipe-size` accepts here: a page (a pipe's smallest size) to
/// 1 MiB, and no more than an unprivileged process may ask for
/// (`/proc/sys/fs/pipe-max-size`; workers run without CAP_SYS_RESOURCE).
fn pipe_size_range() -> (usize, usize) {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as usize);
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(proto::relay::MAX_PIPE_SIZE, |m| {
            m.min(proto::relay::MAX_PIPE_SIZE)
        });
    (page, max.max(page))
}

fn pipe_size(flag: &str, v: &str, (min, max): (usize, usize)) -> Result<usize, String> {
    let n: usize = number(flag, v)?;
    if !(min..=max).contains(&n) {
        return Err(format!(
            "{flag}: {n} is out of range ({min} to {max} bytes: a page to the pipe maximum)"
        ));
    }
    Ok(n)
}

/// Apply `--flag value` to the run options.
fn set(a: &mut RunArgs, flag: &str, v: &str) -> Result<(), String> {
    match flag {
        "--graph" => a.graph = Some(PathBuf::from(v)),
        "--ctrl-socket" => a.ctrl_socket = Some(PathBuf::from(v)),
        "--poll-interval" => {
            a.poll_interval = duration(flag, v)?;
            if a.poll_interval < Duration::from_millis(100) {
                return Err(format!("{flag}: '{v}' is too short (at least 100ms)"));
            }
        }
        "--status-socket" => a.status_socket = PathBuf::from(v),
        "--worker-dir" => a.worker_dir = Some(PathBuf::from(v)),
        "--log-target" => a.log_target = one_of(flag, v, &["auto", "syslog", "stderr"])?,
        "--log-level" => a.log_level = one_of(flag, v, &["error", "warn", "info", "debug"])?,
        "--retry-delay" => a.retry_delay = duration(flag, v)?,
        "--backoff-factor" => a.backoff_factor = number(flag, v)?,
        "--max-delay" => a.max_delay = duration(flag, v)?,
        "--reset-window" => a.reset_window = duration(flag, v)?,
        "--max-retries" => a.max_retries = number(flag, v)?,
        "--backoff-policy" => {
            a.backoff_policy = parse_backoff_policy(v).map_err(|e| format!("{flag}: {e}"))?
        }
        "--drain-timeout" => a.drain_timeout = duration(flag, v)?,
        "--connect-timeout" => a.connect_timeout = duration(flag, v)?,
        "--head-timeout" => a.head_timeout = duration(flag, v)?,
        "--idle-timeout" => a.idle_timeout = duration(flag, v)?,
        "--response-timeout" => a.response_timeout = duration(flag, v)?,
        "--tcp-idle-timeout" => a.tcp_idle_timeout = duration(flag, v)?,
        "--max-conns" => a.max_conns = number(flag, v)?,
        "--pipe-size" => a.pipe_size = pipe_size(flag, v, pipe_size_range())?,
        _ => return Err(format!("unknown option '{flag}' (see --help)")),
    }
    Ok(())
}

/// Options of `run` (all take a value).
const RUN_FLAGS: &[&str] = &[
    "--graph",
    "--ctrl-socket",
    "--poll-interval",
    "--status-socket",
    "--worker-dir",
    "--log-target",
    "--log-level",
    "--retry-delay",
    "--backoff-factor",
    "--max-delay",
    "--reset-window",
    "--max-retries",
    "--backoff-policy",
    "--drain-timeout",
    "--connect-timeout",
    "--head-timeout",
    "--idle-timeout",
    "--response-timeout",
    "--tcp-idle-timeout",
    "--max-conns",
    "--pipe-size",
];

/// Split `--flag=value` / `--flag value` pairs.
fn pairs(args: &[String]) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !a.starts_with("--") {
            return Err(format!("unexpected argument '{a}' (see --help)"));
        }
        match a.split_once('=') {
            Some((f, v)) => out.push((f.to_string(), Some(v.to_string()))),
            None if !RUN_FLAGS.contains(&a.as_str()) && a != "--status-socket" => {
                out.push((a.clone(), None))
            }
            None => {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                out.push((a.clone(), Some(v.clone())));
            }
        }
    }
    Ok(out)
}

/// Parse the arguments after argv[0].
pub fn parse(args: &[String]) -> Result<Command, String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        return Ok(Command::Version);
    }
    match args.first().map(String::as_str) {
        Some("check") => match &args[1..] {
            [file] => Ok(Command::Check(PathBuf::from(file))),
            _ => Err("usage: pv-xconnect check FILE".into()),
        },
        Some("status") => {
            let mut json = false;
            let mut socket = RunArgs::default().status_socket;
            for (f, v) in pairs(&args[1..])? {
                match (f.as_str(), v) {
                    ("--json", None) => json = true,
                    ("--status-socket", Some(v)) => socket = PathBuf::from(v),
                    (f, _) => return Err(format!("status: unknown option '{f}'")),
                }
            }
            Ok(Command::Status { json, socket })
        }
        first => {
            let rest = if first == Some("run") {
                &args[1..]
            } else {
                args
            };
            let mut a = RunArgs::default();
            for (f, v) in pairs(rest)? {
                let v = v.ok_or_else(|| format!("unknown option '{f}' (see --help)"))?;
                set(&mut a, &f, &v)?;
            }
            if a.graph.is_some() && a.ctrl_socket.is_some() {
                return Err("--graph and --ctrl-socket are two graph sources; give one".into());
            }
            Ok(Command::Run(Box::new(a)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn run_is_the_default_and_flags_take_both_forms() {
        let Command::Run(a) = p("--graph g.json --retry-delay=50ms --max-retries 3").unwrap()
        else {
            panic!()
        };
        assert_eq!(a.graph, Some(PathBuf::from("g.json")));
        assert_eq!(a.retry_delay, Duration::from_millis(50));
        assert_eq!(a.max_retries, 3);
        assert_eq!(a.max_delay, Duration::from_secs(30));
        assert_eq!(p("run").unwrap(), Command::Run(Box::default()));
        assert!(p("--graph g --ctrl-socket s")
            .unwrap_err()
            .contains("give one"));
        assert!(p("--poll-interval 10ms").unwrap_err().contains("too short"));
    }

    #[test]
    fn subcommands() {
        assert_eq!(p("check g.json").unwrap(), Command::Check("g.json".into()));
        assert_eq!(
            p("status --json --status-socket /tmp/s").unwrap(),
            Command::Status {
                json: true,
                socket: "/tmp/s".into()
            }
        );
        assert_eq!(p("--help").unwrap(), Command::Help);
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(p("--graph").unwrap_err().contains("--graph needs a value"));
        assert!(p("--bogus")
            .unwrap_err()
            .contains("unknown option '--bogus'"));
        assert!(p("--bogus=1")
            .unwrap_err()
            .contains("unknown option '--bogus'"));
        assert!(p("--log-target file")
            .unwrap_err()
            .contains("--log-target: 'file' is not one of"));
        assert!(p("--max-conns many").unwrap_err().contains("--max-conns"));
        assert!(p("--retry-delay 5h").unwrap_err().contains("--retry-delay"));
        assert!(p("--pipe-size 100")
            .unwrap_err()
            .contains("--pipe-size: 100 is out of range"));
        assert!(p("--pipe-size 2MiB").unwrap_err().contains("--pipe-size"));
        assert!(pipe_size("--pipe-size", "4194304", (4096, 1 << 20)).is_err());
        assert_eq!(
            pipe_size("--pipe-size", "131072", (4096, 1 << 20)),
            Ok(131072)
        );
        let Command::Run(a) = p("--pipe-size=131072").unwrap() else {
            panic!()
        };
        assert_eq!(a.pipe_size, 131072);
        assert_eq!(RunArgs::default().pipe_size, 65536);
        assert!(p("check").is_err());
        assert!(p("stray")
            .unwrap_err()
            .contains("unexpected argument 'stray'"));
    }
}
