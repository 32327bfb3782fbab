//! `pv-xconnect check` for a device image's CI (BEHAVIOUR §6): links of types
//! we do not make real are listed as skipped and leave the exit status
//! alone, a refused link exits 1, a file that is not a graph exits 2;
//! `--json` prints the plan for tools.

use pvx_tests::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;

fn check(args: &[&str], file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(bin_dir().join("pv-xconnect"))
        .arg("check")
        .args(args)
        .arg(file)
        .output()
        .expect("run pv-xconnect check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What Pantavisor serves on a device with a display and a bus, from a
/// tool that writes every field for every link.
fn device_graph() -> serde_json::Value {
    json!([
        {"type":"dbus","name":"system-bus","consumer":"ui","consumer_pid":40,
         "provider":"os","provider_pid":1,"role":"any","interface":"org.freedesktop.NetworkManager",
         "target":"/run/dbus/system_bus_socket","socket":"/run/dbus/system_bus_socket"},
        {"type":"tcp","name":"web","consumer":"EXTERNAL","consumer_pid":0,
         "provider":"nginx","provider_pid":0,"role":"any","interface":"http",
         "target":"0.0.0.0:8080","socket":"10.0.3.2:80",
         "strip_prefix":false,"host":"","sni":null,"proxy_protocol":null,
         "a_field_pantavisor_may_add":{"x":1}},
        {"type":"drm","name":"gpu","consumer":"ui","consumer_pid":40,"target":"/dev/dri/card0"},
        {"type":"http","name":"api","consumer":"EXTERNAL","consumer_pid":0,
         "provider":"api","provider_pid":0,"target":"0.0.0.0:80/api","socket":"10.0.3.3:8080",
         "strip_prefix":true,"host":"","sni":"","proxy_protocol":""},
        {"type":"wayland","name":"display","consumer":"ui","consumer_pid":40}
    ])
}

#[test]
fn skipped_types_and_harmless_extensions_exit_0() {
    let dir = TempDir::new("chk0");
    let f = dir.path().join("g.json");
    std::fs::write(&f, device_graph().to_string()).unwrap();
    let (code, out, err) = check(&[], &f);
    assert_eq!(code, Some(0), "{out}{err}");
    for want in [
        "endpoint tcp 0.0.0.0:8080 (host) consumer=EXTERNAL worker=pvx-worker-tcp",
        "endpoint http 0.0.0.0:80 (host) consumer=EXTERNAL worker=pvx-worker-http",
        "skipped link #0 'system-bus': unsupported link type 'dbus'",
        "skipped link #2 'gpu': unsupported link type 'drm'",
        "skipped link #4 'display': unsupported link type 'wayland'",
        "2 endpoint(s), 0 link(s) refused, 3 skipped",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
    assert!(!out.contains("refused link"), "{out}");
}

#[test]
fn a_refused_link_exits_1_with_its_reason() {
    let dir = TempDir::new("chk1");
    let f = dir.path().join("g.json");
    let mut g = device_graph();
    // An extension that would change something on this type.
    g.as_array_mut().unwrap().push(json!(
        {"type":"http","name":"tls","consumer":"EXTERNAL","target":"0.0.0.0:81",
         "socket":"10.0.3.4:80","sni":"a.example"}
    ));
    std::fs::write(&f, g.to_string()).unwrap();
    let (code, out, err) = check(&[], &f);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("refused link #5 'tls': field 'sni' applies to tcp links, not http"),
        "{out}"
    );
    assert!(out.contains("skipped link #0 'system-bus'"), "{out}");
    assert!(out.contains("1 link(s) refused, 3 skipped"), "{out}");
}

/// Slips image CI must catch: a type with a stray space is refused, not
/// skipped as another type, and a role that would add a header line is
/// refused (printed escaped, so it forges no line of `check`'s own).
#[test]
fn a_mistyped_type_and_a_header_in_a_role_exit_1() {
    let dir = TempDir::new("chk3");
    let f = dir.path().join("g.json");
    let mut g = device_graph();
    let links = g.as_array_mut().unwrap();
    links.push(json!(
        {"type":"tcp ","name":"typo","consumer":"EXTERNAL","target":"0.0.0.0:82",
         "socket":"10.0.3.4:80"}
    ));
    links.push(json!(
        {"type":"http","name":"forged","consumer":"EXTERNAL","target":"0.0.0.0:83/x",
         "socket":"10.0.3.4:80","role":"any\r\nX-PV-Client: admin"}
    ));
    std::fs::write(&f, g.to_string()).unwrap();
    let (code, out, err) = check(&[], &f);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("refused link #5 'typo': link type 'tcp ' must be written 'tcp'"),
        "{out}"
    );
    assert!(
        out.contains(
            "refused link #6 'forged': field 'role' holds a control byte (0x0d at byte 3)"
        ),
        "{out}"
    );
    assert!(!out.contains("\nX-PV-Client"), "{out}");
    assert!(out.contains("2 link(s) refused, 3 skipped"), "{out}");
}

#[test]
fn a_file_that_is_not_a_graph_exits_2() {
    let dir = TempDir::new("chk2");
    let f = dir.path().join("g.json");
    for (text, why) in [
        ("nope", "not valid JSON"),
        ("", "not valid JSON"),
        (
            r#"{"type":"tcp"}"#,
            "must be a JSON array of links, found an object",
        ),
        ("42", "must be a JSON array of links, found a number"),
    ] {
        std::fs::write(&f, text).unwrap();
        for args in [&[][..], &["--json"][..]] {
            let (code, out, err) = check(args, &f);
            assert_eq!(code, Some(2), "{text:?} {args:?}: {out}{err}");
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(out.is_empty(), "{text:?}: {out}");
        }
    }
    let (code, _, err) = check(&[], &dir.path().join("missing.json"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    let (code, _, err) = check(&[], dir.path());
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn json_prints_the_plan_for_tools() {
    let dir = TempDir::new("chkj");
    let f = dir.path().join("g.json");
    let mut g = device_graph();
    g.as_array_mut().unwrap().push(json!(
        {"type":"unix","name":"rel","consumer":"c","target":"run/x.sock","socket":"/y.sock"}
    ));
    std::fs::write(&f, g.to_string()).unwrap();
    let (code, out, err) = check(&["--json"], &f);
    assert_eq!(code, Some(1), "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("check --json is JSON");
    let eps = doc["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{doc}");
    let http = eps.iter().find(|e| e["kind"] == "http").unwrap();
    assert_eq!(http["address"], "0.0.0.0:80");
    assert_eq!(http["namespace"], "host");
    assert_eq!(http["consumer"], "EXTERNAL");
    assert_eq!(http["worker"], "pvx-worker-http");
    assert_eq!(http["routes"][0]["name"], "api");
    assert_eq!(http["routes"][0]["prefix"], "/api");
    assert_eq!(http["routes"][0]["strip_prefix"], true);
    assert_eq!(http["routes"][0]["backend"], "10.0.3.3:8080");
    assert!(http["routes"][0].get("host").is_none(), "{http}");
    let tcp = eps.iter().find(|e| e["kind"] == "tcp").unwrap();
    assert_eq!(tcp["routes"][0]["link"], 1);
    assert_eq!(doc["refused"][0]["index"], 5);
    assert_eq!(doc["refused"][0]["name"], "rel");
    assert!(doc["refused"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("absolute path"));
    let skipped: Vec<(u64, &str)> = doc["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["index"].as_u64().unwrap(), s["name"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped, [(0, "system-bus"), (2, "gpu"), (4, "display")]);
}

/// A mistaken path (a log, an image) is refused by size, naming the cap,
/// without reading it whole; `/dev/zero` would never end otherwise.
#[test]
fn a_file_past_the_cap_is_not_a_graph() {
    let dir = TempDir::new("chkbig");
    let f = dir.path().join("huge.json");
    // Sparse: 33 MiB on the file system costs nothing.
    let file = std::fs::File::create(&f).unwrap();
    file.set_len(33 << 20).unwrap();
    let (code, out, err) = check(&[], &f);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("longer than 32 MiB"), "{err}");
    let (code, _, err) = check(&[], Path::new("/dev/zero"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("longer than 32 MiB"), "{err}");
}
