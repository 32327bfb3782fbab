//! Text from the graph is data, never layout: `check`, `status`, the logs
//! and `ps` show control bytes escaped (one event, one line; no forged
//! `refused link` line), and `check` refuses exactly what `run` refuses.

use pvx_tests::*;
use serde_json::json;
use std::process::Command;

/// A name that, printed raw, would start a line of its own.
const FORGED: &str = "ok\nrefused link #9 'forged': evil\u{1b}[2J";

fn check(graph: &serde_json::Value) -> (Option<i32>, String) {
    let dir = TempDir::new("gtcheck");
    let f = dir.path().join("g.json");
    std::fs::write(&f, graph.to_string()).unwrap();
    let out = Command::new(bin_dir().join("pv-xconnect"))
        .arg("check")
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// No raw control byte but the line ends, and no line the graph made.
fn assert_no_forgery(text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "raw control bytes in:\n{text:?}"
    );
    for l in text.lines() {
        assert!(
            !l.trim_start().starts_with("refused link #9") && !l.trim_start().starts_with("#9"),
            "forged line {l:?} in:\n{text}"
        );
    }
}

#[test]
fn check_escapes_graph_text_and_every_refusal_is_one_line() {
    let g = json!([
        {"type":"tcp","name":FORGED,"consumer":"EXTERNAL","target":"127.0.0.1:1","socket":"10.0.0.2:80"},
        {"type":"unix","name":"u\r\nrefused link #9 'forged': x","consumer":"c",
         "target":"run\nrefused link #9 'forged': rel","socket":"/y.sock"},
        // A consumer is written into X-PV-Client: a control byte refuses it.
        {"type":"tcp","name":"c\u{7}","consumer":"EXT\u{7}ERNAL","target":"127.0.0.1:2","socket":"10.0.0.2:80"}
    ]);
    let (code, text) = check(&g);
    assert_eq!(code, Some(1), "{text}");
    assert_no_forgery(&text);
    let refused: Vec<&str> = text.lines().filter(|l| l.starts_with("refused")).collect();
    assert_eq!(refused.len(), 2, "{text}");
    assert!(
        refused[1].starts_with(
            r"refused link #2 'c\x07': field 'consumer' holds a control byte (0x07 at byte 3)"
        ),
        "{text}"
    );
    assert!(
        refused[0].starts_with(r"refused link #1 'u\r\nrefused link #9 'forged': x': field 'target' must be an absolute path, found 'run\nrefused link #9 'forged': rel'"),
        "{text}"
    );
    assert!(
        text.contains(r"link #0 'ok\nrefused link #9 'forged': evil\x1b[2J'"),
        "{text}"
    );
}

#[test]
fn check_refuses_a_nul_in_a_unix_path_as_run_does() {
    let dir = TempDir::new("gtnul");
    let target = format!("{}/a\u{0}b.sock", dir.path().display());
    let g = json!([
        {"type":"unix","name":"nul","consumer":"EXTERNAL","target":target,"socket":"/run/p.sock"}
    ]);
    let (code, text) = check(&g);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("refused link #0 'nul': field 'target' must not contain a NUL byte"),
        "{text}"
    );
    let sup = Supervisor::start(&g.to_string(), &[]);
    let refused = sup.status()["refused"].clone();
    assert_eq!(
        refused[0]["reason"].as_str(),
        Some("field 'target' must not contain a NUL byte"),
        "{refused}"
    );
    assert!(sup.workers().is_empty());
}

#[test]
fn status_and_logs_escape_graph_text() {
    let port = free_port();
    let backend = echo_server();
    let g = json!([
        {"type":"tcp","name":FORGED,"consumer":"EXTERNAL","target":format!("127.0.0.1:{port}"),
         "socket":backend.to_string()},
        {"type":"dbus","name":"bus\nrefused link #9 'forged': x","consumer":"c","target":"x","socket":"y"}
    ]);
    let sup = Supervisor::start(&g.to_string(), &[]);
    // A link whose name would forge lines still gets its worker, and the
    // link works.
    let w = sup.worker_pid("consumer=EXTERNAL");
    assert!(w > 0);
    assert_eq!(
        roundtrip(format!("127.0.0.1:{port}").parse().unwrap(), b"hi").unwrap(),
        b"hi"
    );
    let out = Command::new(bin_dir().join("pv-xconnect"))
        .args(["status", "--status-socket"])
        .arg(&sup.status_socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_no_forgery(&text);
    assert!(
        text.contains(r"link #0 'ok\nrefused link #9 'forged': evil\x1b[2J'"),
        "{text}"
    );
    assert!(
        text.contains(r"#1 'bus\nrefused link #9 'forged': x': unsupported link type"),
        "{text}"
    );
    // JSON keeps the text as it is (serde escapes it for JSON).
    let json = sup.status();
    assert_eq!(
        json["refused"][0]["name"],
        "bus\nrefused link #9 'forged': x"
    );
    // The log line of the refusal shows the same escapes.
    let log = sup.log_text();
    assert!(
        log.contains(r"refused link #1 'bus\nrefused link #9 'forged': x': unsupported"),
        "{log}"
    );
    assert_no_forgery(&log);
}
