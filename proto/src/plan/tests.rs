//! The planner on whole graphs: endpoints, clashes, replicas, running
//! endpoints kept, the control message's bounds.

use super::*;
use crate::types::{Kind, Policy};

#[test]
fn http_links_share_an_endpoint_tcp_links_do_not() {
    let p = from_graph(
        r#"[
        {"type":"http","name":"a","consumer":"EXTERNAL","target":"0.0.0.0:80/a","socket":"127.0.0.1:1"},
        {"type":"http","name":"b","consumer":"EXTERNAL","target":"0.0.0.0:80/b","socket":"127.0.0.1:2"},
        {"type":"http","name":"b2","consumer":"EXTERNAL","target":"0.0.0.0:80/b/","socket":"127.0.0.1:2"},
        {"type":"tcp","name":"t","consumer":"EXTERNAL","target":"0.0.0.0:81","socket":"127.0.0.1:3"},
        {"type":"tcp","name":"t2","consumer":"EXTERNAL","target":"0.0.0.0:81","socket":"127.0.0.1:4"},
        {"type":"tcp","name":"clash","consumer":"EXTERNAL","target":"0.0.0.0:80","socket":"127.0.0.1:4"},
        {"type":"tcp","name":"other-ns","consumer":"c","consumer_pid":5,"target":"0.0.0.0:81","socket":"127.0.0.1:4"}
    ]"#,
    )
    .unwrap();
    assert_eq!(p.endpoints.len(), 3);
    let http = p.endpoints.iter().find(|e| e.kind == Kind::Http).unwrap();
    assert_eq!(http.routes.len(), 2);
    let idx: Vec<usize> = p.refused.iter().map(|r| r.index).collect();
    assert_eq!(idx, vec![2, 4, 5]);
    assert!(
        p.refused[2].reason.contains("type clash"),
        "{}",
        p.refused[2].reason
    );
}

fn unix_http_link(i: usize, provider_pid: u32, name: &str) -> String {
    format!(
        r#"{{"type":"http","name":"{name}","consumer":"E","target":"0.0.0.0:80/r{i}","socket":"/run/s.sock","provider_pid":{provider_pid}}}"#
    )
}

#[test]
fn links_past_the_provider_roots_one_message_carries_are_refused() {
    use crate::limits::MAX_ROOTS;
    // MAX_ROOTS + 2 providers; a later link to an early provider still fits.
    let mut links: Vec<String> = (0..MAX_ROOTS + 2)
        .map(|i| unix_http_link(i, 100 + i as u32, &format!("l{i}")))
        .collect();
    links.push(unix_http_link(9999, 100, "again"));
    let p = from_graph(&format!("[{}]", links.join(","))).unwrap();
    assert_eq!(p.endpoints.len(), 1);
    let ep = &p.endpoints[0];
    assert_eq!(ep.routes.len(), MAX_ROOTS + 1);
    assert_eq!(ep.root_pids().len(), MAX_ROOTS);
    let idx: Vec<usize> = p.refused.iter().map(|r| r.index).collect();
    assert_eq!(idx, vec![MAX_ROOTS, MAX_ROOTS + 1]);
    assert!(
        p.refused[0].reason.contains("provider containers"),
        "{}",
        p.refused[0].reason
    );
}

#[test]
fn links_past_the_configuration_cap_are_refused() {
    let huge = "n".repeat(crate::limits::MAX_CONFIG);
    let p = from_graph(&format!(
        "[{},{},{}]",
        unix_http_link(0, 0, "small"),
        unix_http_link(1, 0, &huge),
        unix_http_link(2, 0, "after")
    ))
    .unwrap();
    let names: Vec<&str> = p.endpoints[0]
        .routes
        .iter()
        .map(|r| r.via.name.as_str())
        .collect();
    assert_eq!(names, ["small", "after"]);
    assert_eq!(p.refused.len(), 1);
    assert_eq!(p.refused[0].index, 1);
    assert!(
        p.refused[0].reason.contains("MiB"),
        "{}",
        p.refused[0].reason
    );
    // Alone on its endpoint: no endpoint at all.
    let p = from_graph(&format!("[{}]", unix_http_link(0, 0, &huge))).unwrap();
    assert!(p.endpoints.is_empty());
    assert_eq!(p.refused.len(), 1);
}

#[test]
fn sni_allows_shared_tcp_address() {
    let p = from_graph(
        r#"[
        {"type":"tcp","name":"a","consumer":"E","target":"0.0.0.0:443","socket":"127.0.0.1:1","sni":"a.example"},
        {"type":"tcp","name":"b","consumer":"E","target":"0.0.0.0:443","socket":"127.0.0.1:2","sni":"b.example"},
        {"type":"tcp","name":"c","consumer":"E","target":"0.0.0.0:443","socket":"127.0.0.1:2","sni":"b.example"}
    ]"#,
    )
    .unwrap();
    assert_eq!(p.endpoints[0].routes.len(), 2);
    assert_eq!(p.refused.len(), 1);
}

#[test]
fn running_endpoint_wins_a_type_clash() {
    let (links, refused) = crate::graph::parse(
        r#"[
        {"type":"http","name":"new","consumer":"E","target":"0.0.0.0:80/a","socket":"127.0.0.1:1"},
        {"type":"tcp","name":"old","consumer":"E","target":"0.0.0.0:80","socket":"127.0.0.1:2"}
    ]"#,
    )
    .unwrap();
    let p = build_preferring(&links, refused.clone(), |_| Some((Kind::Tcp, "E".into())));
    assert_eq!(p.endpoints[0].kind, Kind::Tcp);
    assert_eq!(p.refused.len(), 1);
    assert_eq!(p.refused[0].index, 0);
    assert!(
        p.refused[0].reason.contains("type clash"),
        "{}",
        p.refused[0].reason
    );
    // Nothing running: graph order decides.
    let p = build_preferring(&links, refused, |_| None);
    assert_eq!(p.endpoints[0].kind, Kind::Http);
    assert_eq!(p.refused[0].index, 1);
}

#[test]
fn same_routes_ignores_graph_position() {
    let a = from_graph(
        r#"[{"type":"tcp","name":"a","consumer":"E","target":"0.0.0.0:1","socket":"127.0.0.1:1"}]"#,
    )
    .unwrap();
    let b = from_graph(r#"[{"type":"dbus","name":"x"},{"type":"tcp","name":"a","consumer":"E","target":"0.0.0.0:1","socket":"127.0.0.1:1"}]"#).unwrap();
    assert!(a.endpoints[0].same_routes(&b.endpoints[0]));
}

#[test]
fn same_routes_in_any_order_counts_each_route() {
    let l = |n: &str, p: &str| {
        format!(
            r#"{{"type":"http","name":"{n}","consumer":"E","target":"0.0.0.0:80/{p}","socket":"127.0.0.1:1"}}"#
        )
    };
    let ep = |links: &[String]| {
        let mut p = from_graph(&format!("[{}]", links.join(","))).unwrap();
        p.endpoints.remove(0)
    };
    let abc = ep(&[l("a", "a"), l("b", "b"), l("c", "c")]);
    assert!(abc.same_routes(&ep(&[l("c", "c"), l("a", "a"), l("b", "b")])));
    assert!(!abc.same_routes(&ep(&[l("c", "c"), l("a", "a"), l("b", "x")])));
    assert!(!abc.same_routes(&ep(&[l("c", "c"), l("a", "a")])));
    // Same length, but one route twice and another not at all.
    let mut twice = abc.clone();
    twice.routes[2] = twice.routes[0].clone();
    assert!(!abc.same_routes(&twice));
    assert!(!twice.same_routes(&abc));
}

fn tcp(name: &str, socket: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"tcp","name":"{name}","consumer":"E","target":"0.0.0.0:81","socket":"{socket}"{extra}}}"#
    )
}

fn http(name: &str, prefix: &str, socket: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"http","name":"{name}","consumer":"E","target":"0.0.0.0:80{prefix}","socket":"{socket}"{extra}}}"#
    )
}

fn plan(links: &[String]) -> Plan {
    from_graph(&format!("[{}]", links.join(","))).unwrap()
}

const LC: &str = r#","balance":"least-conn""#;
const RR: &str = r#","balance":"round-robin""#;

#[test]
fn links_of_one_route_with_the_same_balance_are_its_replicas() {
    let p = plan(&[
        tcp("a", "127.0.0.1:1", LC),
        tcp("b", "127.0.0.1:2", LC),
        tcp("c", "/run/c.sock", &format!(r#"{LC},"provider_pid":7"#)),
    ]);
    assert!(p.refused.is_empty(), "{:?}", p.refused);
    let r = &p.endpoints[0].routes;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].via.balance, Some(Policy::LeastConn));
    let backends: Vec<String> = r[0].backends().map(|b| b.to_string()).collect();
    assert_eq!(
        backends,
        ["127.0.0.1:1", "127.0.0.1:2", "unix:/proc/7/root/run/c.sock"]
    );
    assert_eq!(
        r[0].replicas.iter().map(|x| x.link).collect::<Vec<_>>(),
        [1, 2]
    );
    // A replica in a provider container needs its root.
    assert_eq!(p.endpoints[0].root_pids(), [7]);
    assert_eq!(
        r[0].pool_text(),
        "127.0.0.1:1, 127.0.0.1:2, unix:/proc/7/root/run/c.sock (least-conn)"
    );

    // http: per prefix and host; other routes stay single.
    let p = plan(&[
        http("a1", "/a", "127.0.0.1:1", RR),
        http("b", "/b", "127.0.0.1:3", ""),
        http("a2", "/a/", "127.0.0.1:2", RR),
        http(
            "h1",
            "/a",
            "127.0.0.1:4",
            &format!(r#"{RR},"host":"x.example""#),
        ),
        http(
            "h2",
            "/a",
            "127.0.0.1:5",
            &format!(r#"{RR},"host":"x.example""#),
        ),
    ]);
    assert!(p.refused.is_empty(), "{:?}", p.refused);
    let names: Vec<(&str, usize)> = p.endpoints[0]
        .routes
        .iter()
        .map(|r| (r.via.name.as_str(), r.replicas.len()))
        .collect();
    assert_eq!(names, [("a1", 1), ("b", 0), ("h1", 1)]);

    // tcp with sni: replicas per server name.
    let sni = |n: &str| format!(r#"{LC},"sni":"{n}""#);
    let p = plan(&[
        tcp("x1", "127.0.0.1:1", &sni("x.example")),
        tcp("y", "127.0.0.1:3", r#","sni":"y.example""#),
        tcp("x2", "127.0.0.1:2", &sni("x.example")),
    ]);
    assert!(p.refused.is_empty(), "{:?}", p.refused);
    assert_eq!(p.endpoints[0].routes.len(), 2);
    assert_eq!(p.endpoints[0].routes[0].replicas.len(), 1);
}

#[test]
fn duplicates_and_mixed_groups_are_refused_with_the_links_named() {
    let reasons = |p: &Plan| -> Vec<(usize, String)> {
        p.refused
            .iter()
            .map(|r| (r.index, r.reason.clone()))
            .collect()
    };
    // No balance: duplicates, as before.
    let p = plan(&[tcp("a", "127.0.0.1:1", ""), tcp("b", "127.0.0.1:2", "")]);
    assert_eq!(p.refused.len(), 1);
    assert!(
        p.refused[0].reason.contains("held by link #0 'a'"),
        "{:?}",
        p.refused
    );
    let p = plan(&[
        http("a", "/", "127.0.0.1:1", ""),
        http("b", "/", "127.0.0.1:2", ""),
    ]);
    assert!(
        p.refused[0].reason.contains("already routes prefix '/'"),
        "{:?}",
        p.refused
    );

    // The first without, a later one with.
    let p = plan(&[tcp("a", "127.0.0.1:1", ""), tcp("b", "127.0.0.1:2", LC)]);
    assert_eq!(
        reasons(&p),
        [(1, "link #0 'a' routes the address on 0.0.0.0:81 (host) already (with no 'balance'); links of one route are replicas only when every one has the same 'balance', this link has \"balance\": \"least-conn\"".to_string())]
    );
    // The first with, a later one without or with another policy; the
    // replicas that agree stay.
    let p = plan(&[
        http("a", "/x", "127.0.0.1:1", LC),
        http("b", "/x", "127.0.0.1:2", LC),
        http("c", "/x", "127.0.0.1:3", ""),
        http("d", "/x", "127.0.0.1:4", RR),
    ]);
    assert_eq!(
        reasons(&p),
        [
            (2, "mixed replicas: link #0 'a' routes prefix '/x' on 0.0.0.0:80 (host) with \"balance\": \"least-conn\", this link has no 'balance'; replicas need the same 'balance' on every link of the route".to_string()),
            (3, "mixed replicas: link #0 'a' routes prefix '/x' on 0.0.0.0:80 (host) with \"balance\": \"least-conn\", this link has \"balance\": \"round-robin\"; replicas need the same 'balance' on every link of the route".to_string()),
        ]
    );
    assert_eq!(p.endpoints[0].routes[0].replicas.len(), 1);

    // Replicas agree on what the route does, and name a backend once.
    let p = plan(&[
        http("a", "/", "127.0.0.1:1", LC),
        http("b", "/", "127.0.0.1:2", &format!(r#"{LC},"role":"admin""#)),
        http(
            "c",
            "/",
            "127.0.0.1:3",
            &format!(r#"{LC},"strip_prefix":false"#),
        ),
        http("d", "/", "127.0.0.1:1", LC),
        tcp(
            "t",
            "127.0.0.1:1",
            &format!(r#"{LC},"proxy_protocol":"v1""#),
        ),
        tcp("u", "127.0.0.1:2", LC),
    ]);
    let r = reasons(&p);
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(
        r[0].1.contains(
            "with role 'any', this link has 'admin'; replicas of one route must agree on 'role'"
        ),
        "{r:?}"
    );
    assert!(r[1].1.contains("must agree on 'strip_prefix'"), "{r:?}");
    assert_eq!(r[2].0, 3);
    assert!(
        r[2].1
            .ends_with("already balances to backend 127.0.0.1:1 there"),
        "{r:?}"
    );
    assert!(r[3].1.contains("must agree on 'proxy_protocol'"), "{r:?}");

    // A tcp route without sni and sni routes still do not mix.
    let p = plan(&[
        tcp("a", "127.0.0.1:1", LC),
        tcp("s", "127.0.0.1:2", &format!(r#"{LC},"sni":"s.example""#)),
    ]);
    assert!(
        p.refused[0].reason.contains("distinct 'sni'"),
        "{:?}",
        p.refused
    );
}

/// The planner stays linear with replicas: many routes, each with
/// replicas, and one route with very many.
#[test]
fn replicas_are_planned_in_linear_time() {
    let mut links: Vec<String> = Vec::new();
    for i in 0..3000 {
        for k in 0..3 {
            links.push(http(
                &format!("r{i}-{k}"),
                &format!("/p{i}"),
                &format!("127.0.0.{}:{}", k + 1, 1000 + i),
                LC,
            ));
        }
    }
    for i in 0..5000 {
        links.push(http(
            &format!("big{i}"),
            "/big",
            &format!("127.0.1.1:{}", 1 + i),
            RR,
        ));
    }
    let t = std::time::Instant::now();
    let p = plan(&links);
    assert!(p.refused.is_empty(), "{:?}", &p.refused[..1]);
    assert_eq!(p.endpoints[0].routes.len(), 3001);
    assert_eq!(p.endpoints[0].routes[3000].replicas.len(), 4999);
    // Not a timing assertion of the product: a quadratic planner takes
    // minutes here, a linear one well under this in a debug build.
    assert!(t.elapsed() < std::time::Duration::from_secs(60));
}

/// A route without replicas carries neither `balance` nor `replicas` in
/// its JSON, and reads back without them.
#[test]
fn routes_without_replicas_keep_their_json() {
    let p = plan(&[tcp("a", "127.0.0.1:1", "")]);
    let j = serde_json::to_value(&p.endpoints[0].routes[0]).unwrap();
    assert!(
        j["via"].get("balance").is_none() && j.get("replicas").is_none(),
        "{j}"
    );
    let back: Route = serde_json::from_value(j).unwrap();
    assert_eq!(back, p.endpoints[0].routes[0]);
    let p = plan(&[tcp("a", "127.0.0.1:1", LC), tcp("b", "127.0.0.1:2", LC)]);
    let j = serde_json::to_value(&p.endpoints[0].routes[0]).unwrap();
    assert_eq!(j["via"]["balance"], "least-conn");
    assert_eq!(j["replicas"][0]["backend"]["tcp"], "127.0.0.1:2");
    let back: Route = serde_json::from_value(j).unwrap();
    assert_eq!(back, p.endpoints[0].routes[0]);
    // Graph positions do not count, replicas' neither.
    let q = plan(&[
        r#"{"type":"dbus","name":"x"}"#.to_string(),
        tcp("a", "127.0.0.1:1", LC),
        tcp("b", "127.0.0.1:2", LC),
    ]);
    assert!(p.endpoints[0].same_routes(&q.endpoints[0]));
    let other = plan(&[tcp("a", "127.0.0.1:1", LC), tcp("b", "127.0.0.1:3", LC)]);
    assert!(!p.endpoints[0].same_routes(&other.endpoints[0]));
}
