//! Graph documents and single links, accepted and refused, with the
//! reasons given.

use super::validate::normalise_prefix;
use super::*;

fn one(json: &str) -> Result<Link, Refusal> {
    let (mut l, mut r) = parse(json).expect("array");
    if let Some(r) = r.pop() {
        return Err(r);
    }
    Ok(l.pop().expect("one link"))
}

#[test]
fn reads_pantavisor_tcp_link() {
    let l = one(
        r#"[{"type":"tcp","name":"web","consumer":"EXTERNAL","consumer_pid":0,
        "provider":"nginx","provider_pid":42,"role":"any","interface":"http",
        "target":"0.0.0.0:8080","socket":"10.0.3.2:80"}]"#,
    )
    .unwrap();
    assert_eq!(l.ty, LinkType::Tcp);
    assert_eq!(l.listen, Listen::Tcp("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(l.via.backend, Backend::Tcp("10.0.3.2:80".parse().unwrap()));
}

#[test]
fn unix_backend_resolves_through_provider_root() {
    let l = one(
        r#"[{"type":"unix","name":"s","consumer":"c","consumer_pid":7,"provider":"p",
        "provider_pid":42,"target":"/run/x.sock","socket":"/run/y.sock"}]"#,
    )
    .unwrap();
    assert_eq!(
        l.via.backend,
        Backend::Unix("/proc/42/root/run/y.sock".into())
    );
    assert_eq!(l.listen, Listen::Unix("/run/x.sock".into()));
}

#[test]
fn http_prefix_and_ipv6() {
    let l = one(
        r#"[{"type":"http","name":"a","consumer":"EXTERNAL","target":"[::1]:80/api/v1/",
        "socket":"[fd00:213::2]:8080"}]"#,
    )
    .unwrap();
    assert_eq!(l.via.prefix, "/api/v1");
    assert!(l.via.strip_prefix);
    assert_eq!(l.listen, Listen::Tcp("[::1]:80".parse().unwrap()));
}

#[test]
fn refusals_name_index_name_and_reason() {
    let (links, r) = parse(
        r#"[{"type":"tcp","name":"ok","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
            {"type":"tcp","name":"bad","consumer":"c","target":"1.2.3.4","socket":"1.2.3.4:2"},
            {"type":"dbus","name":"d","consumer":"c","target":"x","socket":"y"},
            {"type":"unix","name":"rel","consumer":"c","target":"run/x","socket":"/y"},
            {"type":"tcp","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
            {"type":"tcp","name":"pid","consumer":"c","consumer_pid":-1,"target":"1.2.3.4:1","socket":"1.2.3.4:2"},
            7]"#,
    )
    .unwrap();
    assert_eq!(links.len(), 1);
    let msgs: Vec<String> = r.iter().map(|r| r.to_string()).collect();
    assert!(
        msgs[0].starts_with("link #1 'bad': field 'target'"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].contains("#2 'd': unsupported link type 'dbus'"),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains("#3 'rel'") && msgs[2].contains("absolute"),
        "{}",
        msgs[2]
    );
    assert!(
        msgs[3].contains("#4 '': missing field 'name'"),
        "{}",
        msgs[3]
    );
    assert!(
        msgs[4].contains("#5 'pid'") && msgs[4].contains("consumer_pid"),
        "{}",
        msgs[4]
    );
    assert!(
        msgs[5].contains("#6") && msgs[5].contains("JSON object"),
        "{}",
        msgs[5]
    );
}

#[test]
fn unix_paths_refused_as_run_would() {
    let unix = |target: &str, socket: &str, ppid: u32| {
        let g = serde_json::json!([{"type":"unix","name":"u","consumer":"c",
            "provider_pid":ppid,"target":target,"socket":socket}]);
        one(&g.to_string()).map(|_| ()).map_err(|r| r.reason)
    };
    let e = unix("/run/a\0b.sock", "/p.sock", 0).unwrap_err();
    assert_eq!(e, "field 'target' must not contain a NUL byte");
    let e = unix("/run/a.sock", "/p\0.sock", 0).unwrap_err();
    assert_eq!(e, "field 'socket' must not contain a NUL byte");
    for dir in ["/run/", "/", "/run/."] {
        let e = unix(dir, "/p.sock", 0).unwrap_err();
        assert!(e.contains("must name a socket file"), "{dir}: {e}");
    }
    // sun_path: 107 bytes and its NUL.
    let at = |n: usize| format!("/{}", "x".repeat(n - 1));
    assert!(unix(&at(107), "/p.sock", 0).is_ok());
    let e = unix(&at(108), "/p.sock", 0).unwrap_err();
    assert!(e.contains("too long") && e.contains("max 107"), "{e}");
    assert!(unix("/t.sock", &at(107), 0).is_ok());
    assert!(unix("/t.sock", &at(106), 42).is_ok());
    assert!(unix("/t.sock", &at(107), 42).is_err());
}

#[test]
fn addresses_no_tcp_socket_can_use_are_refused() {
    assert!(parse_addr("[ff02::1]:80")
        .unwrap_err()
        .contains("multicast"));
    assert!(parse_addr("[fe80::1]:80")
        .unwrap_err()
        .contains("link-local"));
    assert!(parse_addr("[febf::1]:80").is_err());
    assert!(parse_addr("[fe80::1%2]:80").is_ok());
    assert!(parse_addr("[fec0::1]:80").is_ok());
    assert!(parse_addr("[fd00:213::1]:80").is_ok());
}

#[test]
fn links_of_other_types_are_skipped_not_refused() {
    let g = parse_graph(
        r#"[{"type":"dbus","name":"bus","consumer":"c","target":"x","socket":"y"},
            {"type":"drm","name":"gpu"},
            {"type":"wayland"},
            {"type":"TCP","name":"slip","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
            {"type":"tcp ","name":"space","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
            {"name":"untyped","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
            {"type":"","name":"empty"},
            {"type":7,"name":"number"},
            {"type":"tcp","name":"ok","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"}]"#,
    )
    .unwrap();
    assert_eq!(g.links.len(), 1);
    let skipped: Vec<String> = g.skipped.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        skipped,
        [
            "link #0 'bus': unsupported link type 'dbus' (supported: tcp, http, unix, rest)",
            "link #1 'gpu': unsupported link type 'drm' (supported: tcp, http, unix, rest)",
            "link #2 '': unsupported link type 'wayland' (supported: tcp, http, unix, rest)",
        ]
    );
    let refused: Vec<(usize, &str)> = g
        .refused
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            (
                3,
                "link type 'TCP' must be written 'tcp' (lower case, no surrounding spaces)"
            ),
            (
                4,
                "link type 'tcp ' must be written 'tcp' (lower case, no surrounding spaces)"
            ),
            (5, "missing field 'type'"),
            (6, "field 'type' is empty"),
            (7, "field 'type' must be a string, found a number"),
        ]
    );
    // `parse` (run) reports both, in graph order.
    let (_, all) = parse(
        &serde_json::to_string(&serde_json::json!([
            {"type":"tcp","name":"a"},{"type":"dbus","name":"b"}
        ]))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(all.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1]);
}

#[test]
fn graph_text_written_into_headers_holds_no_control_byte() {
    let link = |field: &str, v: &str| {
        let mut l = serde_json::json!({"type":"http","name":"a","consumer":"c",
            "target":"127.0.0.1:80/a","socket":"127.0.0.1:81"});
        l[field] = v.into();
        one(&serde_json::to_string(&serde_json::json!([l])).unwrap())
    };
    let e = link("role", "any\r\nX-PV-Client: admin").unwrap_err();
    assert_eq!(
        e.reason,
        "field 'role' holds a control byte (0x0d at byte 3); it is written into HTTP headers"
    );
    assert!(link("consumer", "app\n")
        .unwrap_err()
        .reason
        .contains("'consumer'"));
    assert!(link("consumer", "a\u{0}b")
        .unwrap_err()
        .reason
        .contains("0x00"));
    assert!(link("host", "a.example\u{7f}")
        .unwrap_err()
        .reason
        .contains("'host'"));
    assert!(link("role", "r\tx").is_err());
    // Spaces and non-ASCII text are field content, not control bytes.
    assert_eq!(link("role", "read only").unwrap().via.role, "read only");
    assert_eq!(link("consumer", "café").unwrap().via.consumer, "café");
}

#[test]
fn unknown_fields_are_ignored() {
    let l = one(
        r#"[{"type":"tcp","name":"t","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2",
        "future_field":{"x":[1,2]},"weight":5,"sni_fallback":"yes"}]"#,
    )
    .unwrap();
    assert_eq!(l.via.name, "t");
}

/// BEHAVIOUR §3: an extension on a link type it does not act on is accepted
/// when its value would change nothing there, refused when it would.
#[test]
fn foreign_extensions_accepted_only_when_harmless() {
    let base = |ty: &str| -> serde_json::Value {
        let (target, socket) = match ty {
            "tcp" | "http" => ("127.0.0.1:80", "127.0.0.1:81"),
            _ => ("/run/t.sock", "/run/s.sock"),
        };
        serde_json::json!({"type":ty,"name":"l","consumer":"c","target":target,"socket":socket})
    };
    let try_link = |ty: &str, key: &str, v: serde_json::Value| {
        let mut link = base(ty);
        link[key] = v;
        one(&serde_json::json!([link]).to_string())
    };
    use serde_json::json;
    let harmless = [json!(null), json!(false), json!(""), json!([]), json!({})];
    for (key, on) in [
        ("strip_prefix", "http"),
        ("host", "http"),
        ("sni", "tcp"),
        ("proxy_protocol", "tcp"),
    ] {
        for ty in ["tcp", "http", "unix", "rest"]
            .into_iter()
            .filter(|t| *t != on)
        {
            for v in &harmless {
                let l = try_link(ty, key, v.clone());
                let l = l.unwrap_or_else(|r| panic!("{ty} {key}={v}: {r}"));
                // ... and it changed nothing.
                assert_eq!(l, one(&json!([base(ty)]).to_string()).unwrap());
            }
        }
    }
    // strip_prefix acts on an http path prefix: tcp, unix and rest
    // links have none, so `true` (its default) changes nothing either.
    for ty in ["tcp", "unix", "rest"] {
        assert!(try_link(ty, "strip_prefix", json!(true)).is_ok(), "{ty}");
        let e = try_link(ty, "strip_prefix", json!("no")).unwrap_err();
        assert!(
            e.reason
                .contains("'strip_prefix' applies to http links, not"),
            "{e}"
        );
    }
    // The issue's example: a tool that writes every field.
    assert!(try_link("tcp", "strip_prefix", json!(false)).is_ok());
    // Values that would change something are refused with the reason.
    for (ty, key, v, on) in [
        ("http", "sni", json!("a.example"), "tcp"),
        ("unix", "sni", json!("a.example"), "tcp"),
        ("http", "proxy_protocol", json!("v1"), "tcp"),
        ("rest", "proxy_protocol", json!("v2"), "tcp"),
        ("tcp", "host", json!("a.example"), "http"),
        ("unix", "host", json!("a.example"), "http"),
        ("tcp", "sni", json!(5), "tcp"),
        ("http", "sni", json!(true), "tcp"),
        ("tcp", "host", json!(["a"]), "http"),
    ] {
        if ty == on {
            continue;
        }
        let e = try_link(ty, key, v.clone()).unwrap_err();
        assert_eq!(
            e.reason,
            format!("field '{key}' applies to {on} links, not {ty}; here only null, false or an empty value is accepted, found {v}")
        );
    }
    let e = try_link("tcp", "host", json!("x".repeat(200))).unwrap_err();
    assert!(e.reason.ends_with("xxx..."), "{}", e.reason);
}

/// `balance` acts on tcp and http; on unix and rest only a value that
/// changes nothing is accepted (BEHAVIOUR §3).
#[test]
fn balance_is_read_on_tcp_and_http_and_refused_elsewhere() {
    use serde_json::json;
    let link = |ty: &str, v: serde_json::Value| {
        let (target, socket) = match ty {
            "tcp" | "http" => ("127.0.0.1:80", "127.0.0.1:81"),
            _ => ("/run/t.sock", "/run/s.sock"),
        };
        one(
            &json!([{"type":ty,"name":"l","consumer":"c","target":target,
            "socket":socket,"balance":v}])
            .to_string(),
        )
    };
    for ty in ["tcp", "http"] {
        assert_eq!(
            link(ty, json!("least-conn")).unwrap().via.balance,
            Some(Policy::LeastConn)
        );
        assert_eq!(
            link(ty, json!("round-robin")).unwrap().via.balance,
            Some(Policy::RoundRobin)
        );
        for v in [json!(null), json!(""), json!(false)] {
            assert_eq!(link(ty, v).unwrap().via.balance, None);
        }
        let e = link(ty, json!("random")).unwrap_err();
        assert_eq!(
            e.reason,
            "field 'balance' must be \"least-conn\" or \"round-robin\", found 'random'"
        );
        assert!(link(ty, json!(1)).is_err());
    }
    for ty in ["unix", "rest"] {
        for v in [json!(null), json!(""), json!(false)] {
            assert_eq!(link(ty, v).unwrap().via.balance, None);
        }
        let e = link(ty, json!("least-conn")).unwrap_err();
        assert_eq!(
            e.reason,
            format!("field 'balance' applies to tcp and http links, not {ty}; here only null, false or an empty value is accepted, found \"least-conn\"")
        );
    }
}

/// On the type they act on, null, false and "" mean "none" for the
/// text extensions; a wrong JSON type is still refused.
#[test]
fn empty_text_extensions_mean_none() {
    use serde_json::json;
    let http = |host: serde_json::Value| {
        one(
            &json!([{"type":"http","name":"h","consumer":"c","target":"127.0.0.1:80",
            "socket":"127.0.0.1:81","host":host}])
            .to_string(),
        )
    };
    for v in [json!(null), json!(""), json!(false)] {
        assert_eq!(http(v.clone()).unwrap().via.host, None, "{v}");
    }
    assert_eq!(
        http(json!("A.example")).unwrap().via.host.as_deref(),
        Some("a.example")
    );
    assert!(http(json!(7))
        .unwrap_err()
        .reason
        .contains("must be a string"));
    assert!(http(json!("a/b"))
        .unwrap_err()
        .reason
        .contains("not a host name"));
    let tcp = |key: &str, v: serde_json::Value| {
        let mut l = json!({"type":"tcp","name":"t","consumer":"c","target":"127.0.0.1:80",
            "socket":"127.0.0.1:81"});
        l[key] = v;
        one(&json!([l]).to_string())
    };
    for v in [json!(null), json!(""), json!(false)] {
        assert_eq!(tcp("sni", v.clone()).unwrap().via.sni, None, "{v}");
        assert_eq!(
            tcp("proxy_protocol", v.clone()).unwrap().via.proxy_protocol,
            None,
            "{v}"
        );
    }
    assert_eq!(
        tcp("proxy_protocol", json!("v2"))
            .unwrap()
            .via
            .proxy_protocol,
        Some(ProxyProtocol::V2)
    );
    assert!(tcp("proxy_protocol", json!("v3")).is_err());
    let e = one(
        &json!([{"type":"http","name":"h","consumer":"c","target":"127.0.0.1:80",
        "socket":"127.0.0.1:81","strip_prefix":"no"}])
        .to_string(),
    )
    .unwrap_err();
    assert!(e.reason.contains("must be true or false"), "{e}");
}

#[test]
fn whole_document_errors() {
    assert!(matches!(parse("{"), Err(GraphError::NotJson(_))));
    assert_eq!(parse("{}"), Err(GraphError::NotArray("an object")));
}

#[test]
fn prefix_normalisation() {
    assert_eq!(normalise_prefix("/").unwrap(), "/");
    assert_eq!(normalise_prefix("/a/b/").unwrap(), "/a/b");
    assert!(normalise_prefix("/a?b").is_err());
}
