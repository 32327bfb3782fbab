//! pvx-worker-http against backends and clients that lie (SPEC §5, issue
//! 8): no byte of one exchange reaches another client, no identity header
//! is forged around the head (trailers, underscores, upgrades), and a
//! request that is not safe to repeat never runs twice.

use proto::ctl::Limits;
use pvx_tests::http::client::{connect, exchange, get, read_resp};
use pvx_tests::http::direct::{config, Worker};
use pvx_tests::http::scripted;
use std::io::Write;

fn route_to(socket: &str) -> Worker {
    Worker::start(config(
        &[("/api", &format!(r#","socket":"{socket}""#))],
        Limits::default(),
    ))
}

/// The target the backend saw, as the first line of the body it answers.
fn tagged(target: &str, len: usize) -> Vec<u8> {
    let mut body = format!("for {target}\n").into_bytes();
    body.resize(len, b'.');
    body
}

#[test]
fn extra_bytes_after_a_response_never_reach_the_next_client() {
    // Every answer carries, in the same write, a whole second response
    // nobody asked for.
    let b = scripted::start(|r| {
        let len = 20_000 + (r.target.len() * 997 + r.nth * 1_013) % 20_000;
        let mut out = scripted::ok(&tagged(&r.target, len));
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
        Some(out)
    });
    let w = route_to(&b.socket());
    let check = |r: &pvx_tests::http::client::Resp, want: &str| {
        assert_eq!(r.status, 200, "{}", r.head);
        let text = r.text();
        assert!(!text.contains("POISON"), "{want}: got {text:.80}");
        assert!(
            text.starts_with(&format!("for {want}\n")),
            "{want}: got {text:.80}"
        );
        assert!(text.len() >= 20_000, "{want}: {} bytes", text.len());
    };
    for i in 0..20 {
        let (r, _s) = exchange(w.addr, &get(&format!("/api/fresh{i}")));
        check(&r, &format!("/fresh{i}"));
    }
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    for i in 0..20 {
        s.write_all(&get(&format!("/api/kept{i}"))).unwrap();
        let r = read_resp(&mut s, &mut buf, false).expect("a response");
        check(&r, &format!("/kept{i}"));
    }
}
