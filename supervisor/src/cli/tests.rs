use super::ranges::{DAY, FLOOR};
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
    assert_eq!(a.pipe_size, default::PIPE_SIZE);
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

/// `MIN to MAX` as a help states it (after `0 (...) or ` when 0 is taken
/// too), and whether 0 is taken besides.
fn stated(help: &str) -> Option<(&str, &str, bool)> {
    let bound = |s: &str| crate::policy::parse_duration(s).is_ok();
    help.match_indices(" to ").find_map(|(i, _)| {
        let before = &help[..i];
        let min = before.rsplit([' ', '\n']).next()?;
        let max = help[i + 4..].split([' ', ',', '\n']).next()?;
        let zero = before[..before.len() - min.len()].ends_with(") or ");
        (bound(min) && bound(max)).then_some((min, max, zero))
    })
}

/// For every ranged flag the range its help states is the one its parser
/// takes: both bounds taken, a value just past either refused with an
/// error naming the flag and the range as the help shows it, and 0 taken
/// exactly when the help says what it means. (`--pipe-size`'s range is the
/// host's, stated in words: `values::tests::pipe_size_range`.)
#[test]
fn help_states_the_range_the_parser_takes() {
    let cmd = Cli::command();
    let mut checked = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let flag = format!("--{long}");
        let names = arg.get_value_names().unwrap_or_default();
        let path = names.iter().any(|n| ["FILE", "PATH"].contains(&n.as_str()));
        let words = !arg.get_possible_values().is_empty();
        if !arg.get_action().takes_values() || path || words || flag == "--pipe-size" {
            continue;
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let (min, max, zero) =
            stated(&help).unwrap_or_else(|| panic!("{flag}: no range in its help: {help}"));
        let range = format!("{min} to {max}");
        // The one rule between two flags stays out of the way.
        let others = ["--retry-delay=10ms", "--max-delay=24h"]
            .into_iter()
            .filter(|o| !o.starts_with(&flag))
            .collect::<Vec<_>>()
            .join(" ");
        let with = |v: &str| format!("{others} {flag}={v}");
        let (below, above) = if max.bytes().all(|b| b.is_ascii_digit()) {
            let (lo, hi): (u64, u64) = (min.parse().unwrap(), max.parse().unwrap());
            (
                lo.checked_sub(1).map(|n| n.to_string()),
                (hi + 1).to_string(),
            )
        } else {
            let ms = |s| crate::policy::parse_duration(s).unwrap().as_millis();
            let (lo, hi) = (ms(min), ms(max));
            (
                lo.checked_sub(1).map(|n| format!("{n}ms")),
                format!("{}ms", hi + 1),
            )
        };
        for v in [min, max] {
            run(&with(v));
        }
        for v in below.iter().chain([&above]) {
            let e = err(&with(v));
            assert!(e.contains(&flag) && e.contains(&range), "{flag}={v}: {e}");
        }
        if min != "0" {
            assert_eq!(p(&with("0")).is_ok(), zero, "{flag}=0 against {help}");
        }
        checked.push(flag);
    }
    assert!(checked.len() >= 20, "{checked:?}");
}
