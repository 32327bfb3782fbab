//! Status-socket requests (supervisor `status_server.rs`): the answer to
//! whatever a local client sends, fed as the server reads it.
//!
//! Invariants: no panic; no answer while the head is incomplete, exactly
//! one once it is complete; every answer is one well-formed HTTP/1.1
//! response whose Content-Length is its body's length, that closes the
//! connection, and whose status is one the server gives (200, 400, 404,
//! 405, 431); bytes past the head change nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use supervisor::status::{Snapshot, SupervisorInfo};
use supervisor::status_server::answer;

fn snapshot() -> Snapshot {
    Snapshot {
        supervisor: SupervisorInfo {
            pid: 1,
            version: "fuzz",
            uptime_s: 0,
            log_dropped: 0,
        },
        endpoints: vec![],
        draining: vec![],
        refused: vec![],
    }
}

fn check(resp: &[u8]) -> u16 {
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Response::new(&mut slots);
    let n = match r.parse(resp) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("answer does not parse: {other:?}"),
    };
    assert_eq!(r.version, Some(1));
    let code = r.code.expect("a status code");
    assert!(matches!(code, 200 | 400 | 404 | 405 | 431), "status {code}");
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .expect("ascii")
                .parse::<usize>()
                .expect("a length")
        })
        .expect("Content-Length");
    assert_eq!(len, resp.len() - n, "Content-Length is not the body's");
    assert!(r
        .headers
        .iter()
        .any(|h| h.name == "Connection" && h.value == b"close"));
    code
}

fuzz_target!(|data: &[u8]| {
    let whole = answer(data, &snapshot);
    // The server asks again after every read: the first prefix that gets
    // an answer is the one sent. Reads of 7 bytes stand for any split.
    let mut first = None;
    for end in (1..=data.len())
        .step_by(7)
        .chain(std::iter::once(data.len()))
    {
        if let Some(a) = answer(&data[..end], &snapshot) {
            first = Some((end, a));
            break;
        }
    }
    match (&whole, &first) {
        (None, None) => {}
        (Some(w), Some((_, f))) => {
            let code = check(w);
            assert_eq!(
                check(f),
                code,
                "the answer depends on how the request was read"
            );
        }
        (None, Some((end, _))) => panic!("answered a prefix of {end} bytes, not the whole"),
        (Some(_), None) => panic!("answered the whole but no prefix"),
    }
});
