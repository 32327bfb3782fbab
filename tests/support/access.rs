//! Reading what `--access-log stderr` and `/metrics` say, for the access
//! log's tests (tcp, unix and http alike): the lines a supervisor's log
//! holds as `key=value` pairs, and samples of the exposition, checked by
//! `promtool check metrics` first.

use crate::Supervisor;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// One access line: its `key=value` pairs, in order.
pub type Line = Vec<(String, String)>;

/// Every access line in the supervisor's log so far (its workers share
/// its stderr), whatever its kind.
pub fn access_lines(sup: &Supervisor) -> Vec<Line> {
    sup.log_text()
        .lines()
        .filter_map(|l| l.split_once(": access: "))
        .map(|(_, rest)| {
            rest.split(' ')
                .map(|kv| {
                    let (k, v) = kv
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{kv:?} is no key=value in {rest:?}"));
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .collect()
}

/// The value of `key` in `l`; the test fails if it has none.
pub fn field<'a>(l: &'a Line, key: &str) -> &'a str {
    l.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key}= in {l:?}"))
}

/// `promtool check metrics` on `text`: clean (nothing said, not even a
/// lint), or the test fails with what it said.
pub fn promtool_check(text: &str) {
    let promtool = Path::new("/usr/bin/promtool");
    assert!(
        promtool.exists(),
        "promtool missing: scripts/setup.sh installs it (Debian's prometheus)"
    );
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("metrics to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/metrics` of `sup`, after `promtool_check`.
pub fn checked_metrics(sup: &Supervisor) -> String {
    let (code, text) = sup.http_status("/metrics");
    assert_eq!(code, 200, "{text}");
    promtool_check(&text);
    text
}

/// The value of the one sample of `name` whose labels include every
/// `(label, value)` of `labels`, each matched whole.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let found: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|l| l.split_once("} "))
        .filter(|(ls, _)| want.iter().all(|w| ls.split(',').any(|x| x == w)))
        .map(|(_, v)| v.trim().parse().expect("a sample's value"))
        .collect();
    assert_eq!(found.len(), 1, "one sample {name} {labels:?} in:\n{text}");
    found[0]
}
