//! Request heads (worker-http `head/request.rs`, `head/forward.rs`):
//! parse, then write the head the backend gets, then read that head back
//! as a backend would.
//!
//! Invariants: no panic; a complete head never claims more bytes than it
//! was given; what we forward parses as one complete head of exactly its
//! own length, with the same method and framing (a backend must frame the
//! body as we do, or a request is smuggled past us), and exactly one of
//! each identity header, with our values (BEHAVIOUR §5: no forged identity).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use worker_http::fields::MAX_HEADERS;
use worker_http::head::{parse_request, write_request, Client, Parsed};
use worker_http::route::Table;

const ROLE: &str = "fuzz-role";
const CONSUMER: &str = "EXTERNAL";

/// Routes as the worker gets them, from a graph: prefixes with and
/// without stripping, and host routes.
const GRAPH: &str = r#"[
 {"type":"http","name":"root","consumer":"EXTERNAL","role":"fuzz-role","target":"0.0.0.0:80","socket":"127.0.0.1:1"},
 {"type":"http","name":"api","consumer":"EXTERNAL","role":"fuzz-role","target":"0.0.0.0:80/api/","socket":"127.0.0.1:2"},
 {"type":"http","name":"v1","consumer":"EXTERNAL","role":"fuzz-role","target":"0.0.0.0:80/api/v1","socket":"127.0.0.1:3"},
 {"type":"http","name":"host","consumer":"EXTERNAL","role":"fuzz-role","target":"0.0.0.0:80/x/","socket":"127.0.0.1:4","host":"*.example.com"}
]"#;

thread_local! {
    static TABLE: Table = {
        let plan = proto::plan::from_graph(GRAPH).expect("the fuzz graph parses");
        assert!(plan.refused.is_empty(), "{:?}", plan.refused);
        Table::new(&plan.endpoints[0].routes)
    };
}

fn client(variant: usize) -> Client {
    let ip: Option<IpAddr> = match variant % 3 {
        0 => Some([127, 0, 0, 1].into()),
        1 => Some("fd00:213::1".parse().expect("literal address")),
        _ => None,
    };
    Client { ip }
}

fn values<'a>(h: &'a [httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    h.iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let req = match parse_request(data) {
        Ok(Parsed::Complete(r)) => r,
        Ok(Parsed::Partial) | Err(_) => return,
    };
    assert!(req.len <= data.len(), "head longer than its input");
    // The route the worker would pick; none: it answers 404 itself. The
    // client varies with the input's length: every seed keeps all its
    // bytes for the head.
    let Some(route) = TABLE.with(|t| t.lookup(req.host.as_deref(), req.path()).cloned()) else {
        return;
    };
    let mut out = Vec::new();
    write_request(&req, &data[..req.len], &route, client(data.len()), &mut out);

    // What the backend reads, first as a plain HTTP parser ...
    // At most MAX_HEADERS lines: what we forward passes our own limit.
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut back = httparse::Request::new(&mut slots);
    match back.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len(), "forwarded head has trailing bytes")
        }
        other => panic!(
            "forwarded head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(back.method, Some(req.method.as_str()));
    let h = &*back.headers;
    assert_eq!(
        values(h, "x-pv-role"),
        [ROLE.as_bytes()],
        "X-PV-Role forged or missing"
    );
    assert_eq!(
        values(h, "x-pv-client"),
        [CONSUMER.as_bytes()],
        "X-PV-Client forged or missing"
    );
    assert_eq!(values(h, "x-forwarded-proto"), [b"http".as_slice()]);
    assert!(values(h, "x-forwarded-for").len() <= 1);
    assert!(values(h, "x-forwarded-host").len() <= 1);
    assert!(values(h, "host").len() <= 1);

    // ... then as our own strict parser: same framing, same host.
    match parse_request(&out) {
        Ok(Parsed::Complete(again)) => {
            assert_eq!(again.len, out.len());
            assert_eq!(
                again.framing, req.framing,
                "backend would frame the body differently"
            );
            assert_eq!(again.method, req.method);
            assert_eq!(again.minor, req.minor);
            assert_eq!(again.host, req.host);
            assert_eq!(again.upgrade, req.upgrade);
        }
        // Our own parser leaves room for lines it would add: a forwarded
        // head near the limit is refused with 431, framing not read.
        Err(r) if r.status == 431 => {}
        other => panic!(
            "forwarded head refused by our own parser: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
});
