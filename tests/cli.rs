//! The command line of the real binary (BEHAVIOUR §6): every flag refuses an
//! out-of-range or overflowing value with exit status 2 and a message that
//! names the flag, the value and the range, never a panic; `--help` and
//! `--version` work.

use pvx_tests::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Run `pv-xconnect args...` and return (exit code, stdout, stderr). A
/// command line that is (wrongly) accepted would start a supervisor that
/// runs until stopped: it gets a graph file that does not exist and a
/// status socket of its own, and is killed if it has not exited on its
/// own after a generous while, so the test fails instead of hanging.
fn pvx(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = TempDir::new("cli");
    let sock = dir.path().join("status.sock");
    let mut cmd = Command::new(bin_dir().join("pv-xconnect"));
    cmd.args(args);
    let other = matches!(args.first(), Some(&"check" | &"status" | &"stray"));
    if !other && !args.contains(&"--help") && !args.contains(&"--version") {
        cmd.arg("--status-socket").arg(&sock);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pv-xconnect");
    let pid = child.id();
    let exited = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let mut left = 600;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return true,
                    Ok(None) if left == 0 => return false,
                    Ok(None) => {
                        left -= 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        waiter.join().unwrap_or(false)
    });
    if !exited {
        kill9(pid);
    }
    let out = child.wait_with_output().expect("pv-xconnect output");
    assert!(exited, "pv-xconnect {args:?} did not exit: accepted?");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_flag_refuses_bad_values_with_exit_2_naming_flag_value_and_range() {
    // (flag, bad value, the range its message must show)
    let table: &[(&str, &str, &str)] = &[
        ("--poll-interval", "10ms", "100ms to 24h"),
        ("--poll-interval", "99999999999999999999", "100ms to 24h"),
        ("--retry-delay", "0", "10ms to 24h"),
        ("--retry-delay", "9ms", "10ms to 24h"),
        ("--retry-delay", "25h", "10ms to 24h"),
        ("--retry-delay", "-1s", "10ms to 24h"),
        ("--retry-delay", "5d", "10ms to 24h"),
        ("--max-delay", "99999999999999999999", "10ms to 24h"),
        ("--max-delay", "0", "10ms to 24h"),
        ("--max-delay", "1e400", "10ms to 24h"),
        ("--backoff-factor", "0.5", "1 to 100"),
        ("--backoff-factor", "101", "1 to 100"),
        ("--backoff-factor", "NaN", "1 to 100"),
        ("--backoff-factor", "inf", "1 to 100"),
        ("--backoff-factor", "1e999", "1 to 100"),
        ("--reset-window", "25h", "0 to 24h"),
        ("--reset-window", "99999999999999999999m", "0 to 24h"),
        ("--max-retries", "1000001", "0 to 1000000"),
        ("--max-retries", "99999999999999999999", "0 to 1000000"),
        ("--max-retries", "-1", "0 to 1000000"),
        ("--backoff-policy", "0", "10ms to 24h"),
        ("--backoff-policy", "99999999999999999999", "10ms to 24h"),
        ("--backoff-policy", "reboot", "`never` or 10ms to 24h"),
        ("--drain-timeout", "25h", "0 to 24h"),
        ("--connect-timeout", "0", "10ms to 24h"),
        ("--connect-timeout", "99999999999999999999", "10ms to 24h"),
        ("--head-timeout", "0", "10ms to 24h"),
        ("--head-timeout", "1e9h", "10ms to 24h"),
        ("--idle-timeout", "0", "10ms to 24h"),
        ("--idle-timeout", "99999999999999999999", "10ms to 24h"),
        ("--response-timeout", "0", "10ms to 24h"),
        ("--response-timeout", "25h", "10ms to 24h"),
        ("--tcp-idle-timeout", "5ms", "0 (never) or 10ms to 24h"),
        (
            "--tcp-idle-timeout",
            "99999999999999999999",
            "0 (never) or 10ms to 24h",
        ),
        ("--max-conns", "0", "1 to 1000000"),
        ("--max-conns", "18446744073709551616", "1 to 1000000"),
        ("--max-conns", "many", "1 to 1000000"),
        ("--pipe-size", "1", "bytes"),
        ("--pipe-size", "1048577", "bytes"),
        ("--pipe-size", "99999999999999999999", "bytes"),
        ("--hold-timeout", "5ms", "0 (never) or 10ms to 24h"),
        ("--hold-timeout", "25h", "0 (never) or 10ms to 24h"),
        ("--max-held", "1000001", "0 to 1000000"),
        ("--max-held", "-1", "0 to 1000000"),
        ("--health-interval", "10ms", "0 (no checks) or 100ms to 24h"),
        ("--health-timeout", "0", "10ms to 24h"),
        ("--health-fall", "0", "1 to 1000"),
        ("--health-rise", "1001", "1 to 1000"),
        ("--log-target", "file", "auto, syslog, stderr"),
        ("--log-level", "trace", "error, warn, info, debug"),
        ("--access-log", "file", "off, syslog, stderr"),
    ];
    // Every flag of `run` that takes a value other than a path is in the
    // table: a flag added later cannot skip its range.
    let (_, help, _) = pvx(&["run", "--help"]);
    for l in help.lines() {
        let Some((flag, value)) = l.trim().split_once(' ') else {
            continue;
        };
        let path = ["<FILE>", "<PATH>", "<DIR>"].contains(&value);
        if flag.starts_with("--") && value.starts_with('<') && !path {
            assert!(
                table.iter().any(|(f, _, _)| *f == flag),
                "{flag} {value} has no bad value in the table"
            );
        }
    }
    let mut failures = Vec::new();
    for &(flag, value, range) in table {
        for args in [
            vec![flag.to_string(), value.to_string()],
            vec!["run".into(), format!("{flag}={value}")],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, _, err) = pvx(&args);
            let ok = code == Some(2)
                && err.contains(flag)
                && err.contains(value)
                && err.contains(range)
                && !err.contains("panicked");
            if !ok {
                failures.push(format!("{args:?}: exit {code:?}: {err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn flags_that_clash_or_are_unknown_exit_2_with_a_message() {
    for (args, want) in [
        (
            &["--retry-delay", "0", "--max-delay", "0"][..],
            "--retry-delay",
        ),
        (
            &["--retry-delay", "2s", "--max-delay", "1s"][..],
            "--max-delay (1s) must not be below --retry-delay (2s)",
        ),
        (&["--graph", "a", "--ctrl-socket", "b"][..], "--ctrl-socket"),
        (&["--bogus"][..], "--bogus"),
        (&["--graph"][..], "--graph"),
        (&["stray"][..], "stray"),
        (&["check"][..], "FILE"),
        (&["status", "--graph", "g"][..], "--graph"),
        (&["--graph", "g", "check", "g"][..], "check"),
    ] {
        let (code, _, err) = pvx(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn help_and_version() {
    let (code, out, _) = pvx(&["--help"]);
    assert_eq!(code, Some(0));
    for want in [
        "pv-xconnect check [--json] FILE",
        "--retry-delay <D>",
        "[default: 20ms]",
        "--backoff-policy <never|DURATION>",
        "--pipe-size <BYTES>",
        "Durations: 250ms, 5s, 1.5s, 2m, 1h",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
    let (code, out, _) = pvx(&["run", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--max-conns <N>"), "{out}");
    let (code, out, _) = pvx(&["check", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("1 when a link is refused"), "{out}");
    let (code, out, _) = pvx(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        format!("pv-xconnect {}", env!("CARGO_PKG_VERSION"))
    );
}
