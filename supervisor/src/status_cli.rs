//! `pv-xconnect status [--json | --metrics] [--status-socket PATH]`: ask the
//! running supervisor over its status socket and print a table (or the raw
//! JSON, or the Prometheus text of `/metrics`).
//! The table is read loosely from the JSON (a missing field shows as `-`),
//! so an older or newer supervisor still gets a useful answer.

use crate::http_client;
use serde_json::Value;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);
/// Far above any real answer; a runaway peer cannot fill our memory.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// GET `path` on the status socket; returns the body of a 200 answer.
pub fn fetch(socket: &Path, path: &str) -> Result<String, String> {
    let shown = socket.display();
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!("no pv-xconnect supervisor answers on {shown} ({e}); is it running? (--status-socket PATH)")
    })?;
    s.set_read_timeout(Some(TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("{shown}: setting timeouts: {e}"))?;
    s.write_all(&http_client::get(path, "pv-xconnect"))
        .map_err(|e| format!("{shown}: sending request: {e}"))?;
    let answer = http_client::Reader::new(MAX_ANSWER)
        .read_from(&mut s)
        .unwrap_or_else(|| Err(format!("no answer within {} s", TIMEOUT.as_secs())))
        .map_err(|e| format!("{shown}: no answer from the supervisor: {e}"))?;
    if answer.code != 200 {
        return Err(format!(
            "{shown}: supervisor answered {} {}",
            answer.code, answer.reason
        ));
    }
    String::from_utf8(answer.body).map_err(|_| format!("{shown}: answer is not UTF-8"))
}

/// What `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Table,
    Json,
    Metrics,
}

pub fn run(socket: &Path, show: Show) -> ExitCode {
    let path = match show {
        Show::Metrics => "/metrics",
        Show::Table | Show::Json => "/status",
    };
    let body = match fetch(socket, path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("pv-xconnect status: {e}");
            return ExitCode::FAILURE;
        }
    };
    if show != Show::Table {
        print!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(v) => {
            print!("{}", table(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pv-xconnect status: answer is not JSON: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A cell of the table. Strings (names, paths, reasons: text from the
/// graph) are escaped, so none can add a line or a control byte.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => proto::text::escape(s).into_owned(),
        other => other.to_string(),
    }
}

/// 1234567 -> 1.2M; exact below 10k so small tests read easily.
fn human(v: &Value) -> String {
    let Some(n) = v.as_u64() else {
        return "-".into();
    };
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut f = n as f64;
    let mut i = 0;
    while f >= 10_000.0 && i < UNITS.len() - 1 {
        f /= 1000.0;
        i += 1;
    }
    if i == 0 {
        n.to_string()
    } else {
        format!("{f:.1}{}", UNITS[i])
    }
}

pub fn table(v: &Value) -> String {
    let mut rows = vec![[
        "ENDPOINT",
        "KIND",
        "CONSUMER",
        "PID",
        "STATE",
        "RESTARTS",
        "CONNS",
        "BYTES IN",
        "BYTES OUT",
        "ERRORS",
    ]
    .map(String::from)
    .to_vec()];
    let mut notes: Vec<(usize, String)> = Vec::new();
    let empty = Vec::new();
    let eps = v["endpoints"].as_array().unwrap_or(&empty);
    for e in eps {
        let w = &e["worker"];
        let mut ep = s(&e["address"]);
        if e["namespace"] != "host" {
            ep.push_str(&format!(" [{}]", s(&e["namespace"])));
        }
        let mut state = s(&w["state"]);
        if let Some(ms) = w["restart_in_ms"].as_u64() {
            state.push_str(&format!(" ({ms} ms)"));
        }
        rows.push(vec![
            ep,
            s(&e["kind"]),
            s(&e["consumer"]),
            s(&w["pid"]),
            state,
            s(&w["restarts"]),
            format!("{}/{}", s(&w["active"]), s(&w["total"])),
            human(&w["bytes_in"]),
            human(&w["bytes_out"]),
            s(&w["errors"]),
        ]);
        let row = rows.len() - 1;
        // Served routes; then the graph's, when the worker has not
        // acknowledged them (starting, backing off, update refused).
        let pending = e["pending_routes"].as_array();
        let served = e["routes"].as_array().unwrap_or(&empty).iter();
        let wanted = pending.into_iter().flatten();
        for (r, pend) in served.map(|r| (r, false)).chain(wanted.map(|r| (r, true))) {
            let mut what = format!("  link #{} '{}'", s(&r["link"]), s(&r["name"]));
            for k in ["host", "prefix", "sni"] {
                if r[k].is_string() {
                    what.push_str(&format!(" {k}={}", s(&r[k])));
                }
            }
            what.push_str(&format!(" -> {}", s(&r["backend"])));
            let replicas = r["replicas"].as_array().filter(|x| !x.is_empty());
            if let Some(n) = replicas.map(Vec::len) {
                what.push_str(&format!(" ({} of {n} replicas)", s(&r["balance"])));
            }
            if pend {
                what.push_str(" (pending: not acknowledged by the worker)");
            }
            notes.push((row, what));
            // A pool: each replica and its backend.
            for x in replicas.into_iter().flatten() {
                notes.push((
                    row,
                    format!(
                        "    replica link #{} '{}' -> {}",
                        s(&x["link"]),
                        s(&x["name"]),
                        s(&x["backend"])
                    ),
                ));
            }
        }
        // An endpoint whose listener could not be made yet: why, and what next.
        let p = &e["pending"];
        if p.is_object() {
            let next = match (p["next_try_ms"].as_u64(), p["given_up"].as_bool()) {
                (Some(ms), Some(true)) => format!("given up; starting over in {ms} ms"),
                (Some(ms), _) => format!("next try in {ms} ms"),
                (None, _) => "given up until the graph is applied again".into(),
            };
            notes.push((
                row,
                format!(
                    "  pending: {} (attempt {}; {next})",
                    s(&p["reason"]),
                    s(&p["attempts"])
                ),
            ));
        }
        let h = &w["hold"];
        if h["total"].as_u64().is_some_and(|n| n > 0)
            || h["over_limit"].as_u64().is_some_and(|n| n > 0)
        {
            notes.push((
                row,
                format!(
                    "  held: {} now, {} in all ({} connected, {} failed, {} over --max-held), longest wait {} ms",
                    s(&h["held"]),
                    s(&h["total"]),
                    s(&h["connected"]),
                    s(&h["failed"]),
                    s(&h["over_limit"]),
                    s(&h["wait_ms_max"])
                ),
            ));
        }
        for b in e["backends"].as_array().into_iter().flatten() {
            let last = match b["last_check_ms_ago"].as_u64() {
                Some(ms) => format!("last check {ms} ms ago"),
                None => "not checked yet".into(),
            };
            let mut line = format!(
                "  backend {}: {} ({} checks, {} failures, {last})",
                s(&b["backend"]),
                s(&b["state"]),
                s(&b["checks"]),
                s(&b["failures"])
            );
            if b["last_error"].is_string() {
                line.push_str(&format!("; last error: {}", s(&b["last_error"])));
            }
            notes.push((row, line));
        }
        if w["last_exit"].is_string() {
            notes.push((row, format!("  last worker {}", s(&w["last_exit"]))));
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        for (_, n) in notes.iter().filter(|(row, _)| *row == i) {
            out.push_str(n);
            out.push('\n');
        }
    }
    if eps.is_empty() {
        out.push_str("(no endpoints)\n");
    }
    if let Some(d) = v["draining"].as_array().filter(|d| !d.is_empty()) {
        out.push_str("\ndraining workers:\n");
        for x in d {
            out.push_str(&format!(
                "  {} [{}] pid {}\n",
                s(&x["address"]),
                s(&x["namespace"]),
                s(&x["pid"])
            ));
        }
    }
    let refused = v["refused"].as_array().unwrap_or(&empty);
    if refused.is_empty() {
        out.push_str("\nno refused links\n");
    } else {
        out.push_str(&format!("\nrefused links ({}):\n", refused.len()));
        for r in refused {
            out.push_str(&format!(
                "  #{} '{}': {}\n",
                s(&r["index"]),
                s(&r["name"]),
                s(&r["reason"])
            ));
        }
    }
    if let Some(p) = v["supervisor"]["pid"].as_u64() {
        out.push_str(&format!(
            "supervisor pid {p}, up {} s\n",
            s(&v["supervisor"]["uptime_s"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_held_connections_and_backend_health() {
        let v: Value = serde_json::from_str(
            r#"{"endpoints":[{"kind":"http","address":"0.0.0.0:80","namespace":"host","consumer":"E",
                  "routes":[],
                  "backends":[{"backend":"10.0.3.2:80","state":"down","checks":412,"failures":3,
                               "fails_in_row":2,"last_check_ms_ago":140,"last_check_unix_ms":1,
                               "last_error":"connect: Connection refused"},
                              {"backend":"unix:/run/a.sock","state":"up","checks":0,"failures":0,
                               "fails_in_row":0,"last_check_ms_ago":null,"last_check_unix_ms":0,"last_error":null}],
                  "worker":{"pid":7,"state":"running","restarts":0,"active":2,"total":40,"bytes_in":0,
                            "bytes_out":0,"errors":0,
                            "hold":{"held":2,"total":37,"connected":35,"failed":0,"over_limit":0,
                                    "wait_ms_total":9000,"wait_ms_max":3120}}}],
                "refused":[]}"#,
        )
        .unwrap();
        let t = table(&v);
        assert!(
            t.contains("  held: 2 now, 37 in all (35 connected, 0 failed, 0 over --max-held), longest wait 3120 ms\n"),
            "{t}"
        );
        assert!(
            t.contains("  backend 10.0.3.2:80: down (412 checks, 3 failures, last check 140 ms ago); last error: connect: Connection refused\n"),
            "{t}"
        );
        assert!(
            t.contains("  backend unix:/run/a.sock: up (0 checks, 0 failures, not checked yet)\n"),
            "{t}"
        );
    }

    #[test]
    fn table_shows_endpoints_routes_and_refusals() {
        let v: Value = serde_json::from_str(
            r#"{"supervisor":{"pid":9,"uptime_s":3},
                "endpoints":[{"kind":"tcp","address":"127.0.0.1:8080","namespace":"pid:42","consumer":"app",
                  "routes":[{"link":0,"name":"db","backend":"10.0.0.2:5432"}],
                  "pending_routes":[{"link":1,"name":"db2","backend":"10.0.0.3:5432"}],
                  "worker":{"pid":null,"state":"backoff","restart_in_ms":40,"restarts":3,"active":0,"total":12345678,
                            "bytes_in":5,"bytes_out":12000,"errors":1,"last_exit":"killed by SIGKILL"}}],
                "refused":[{"index":2,"name":"x","reason":"missing field 'socket'"}]}"#,
        )
        .unwrap();
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ENDPOINT"), "{t}");
        assert!(
            lines[1].contains("127.0.0.1:8080 [pid:42]")
                && lines[1].contains("backoff (40 ms)")
                && lines[1].contains("0/12345678")
                && lines[1].contains("12.0k"),
            "{t}"
        );
        assert!(t.contains("  link #0 'db' -> 10.0.0.2:5432\n"), "{t}");
        assert!(
            t.contains(
                "  link #1 'db2' -> 10.0.0.3:5432 (pending: not acknowledged by the worker)"
            ),
            "{t}"
        );
        assert!(t.contains("last worker killed by SIGKILL"), "{t}");
        assert!(t.contains("#2 'x': missing field 'socket'"), "{t}");
    }

    #[test]
    fn table_shows_the_replicas_of_a_route() {
        let v = serde_json::json!({
            "endpoints":[{"kind":"tcp","address":"127.0.0.1:81","namespace":"host","consumer":"E",
              "routes":[{"link":0,"name":"a","backend":"127.0.0.1:1","balance":"least-conn",
                "replicas":[{"link":0,"name":"a","backend":"127.0.0.1:1"},
                            {"link":3,"name":"b","backend":"unix:/run/b.sock"}]}],
              "worker":{"pid":7,"state":"running"}}]});
        let t = table(&v);
        assert!(
            t.contains("  link #0 'a' -> 127.0.0.1:1 (least-conn of 2 replicas)\n    replica link #0 'a' -> 127.0.0.1:1\n    replica link #3 'b' -> unix:/run/b.sock\n"),
            "{t}"
        );
    }

    #[test]
    fn table_shows_a_pending_endpoint_with_its_reason_and_next_try() {
        let v = serde_json::json!({
            "endpoints":[{"kind":"tcp","address":"127.0.0.1:81","namespace":"host","consumer":"E",
              "routes":[],"pending_routes":[{"link":0,"name":"a","backend":"127.0.0.1:1"}],
              "pending":{"reason":"cannot listen: bind 127.0.0.1:81: EADDRINUSE","attempts":3,"next_try_ms":160,"given_up":false},
              "worker":{"pid":null,"state":"pending","restart_in_ms":160}}]});
        let t = table(&v);
        assert!(
            t.lines().nth(1).unwrap().contains("pending (160 ms)"),
            "{t}"
        );
        assert!(
            t.contains("  pending: cannot listen: bind 127.0.0.1:81: EADDRINUSE (attempt 3; next try in 160 ms)"),
            "{t}"
        );
        let mut v = v;
        v["endpoints"][0]["pending"]["given_up"] = true.into();
        v["endpoints"][0]["pending"]["next_try_ms"] = serde_json::Value::Null;
        assert!(table(&v).contains("given up until the graph is applied again"));
    }

    #[test]
    fn table_escapes_text_from_the_graph() {
        let v = serde_json::json!({
            "endpoints":[{"kind":"unix","address":"unix:/run/a\nb","namespace":"host","consumer":"c\u{1b}[2J",
              "routes":[{"link":0,"name":"n\nrefused link #9","prefix":"/p\r","backend":"unix:/x"}],
              "worker":{"last_exit":"exec /x\n: gone"}}],
            "refused":[{"index":1,"name":"r\n#9 'f'","reason":"found 'a\u{0}'"}]});
        let t = table(&v);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        for l in t.lines() {
            assert!(
                !l.starts_with("refused link #9") && !l.starts_with("#9"),
                "{t}"
            );
        }
        assert!(
            t.contains(r"unix:/run/a\nb") && t.contains(r"c\x1b[2J"),
            "{t}"
        );
        assert!(
            t.contains(r"link #0 'n\nrefused link #9' prefix=/p\r"),
            "{t}"
        );
        assert!(t.contains(r"#1 'r\n#9 'f'': found 'a\0'"), "{t}");
        assert!(t.contains(r"last worker exec /x\n: gone"), "{t}");
    }
}
