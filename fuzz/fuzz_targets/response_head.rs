//! Response heads (worker-http `head/response.rs`): parse a backend's
//! head, then finish the head the client gets and read it back as a
//! client would.
//!
//! Invariants: no panic; a complete head never claims more bytes than it
//! was given; what the client gets is one complete head of exactly its own
//! length with the backend's status, which our parser frames exactly as
//! it framed the original (the client must find the end of the body where
//! we do, or it reads bytes of another exchange); a final response
//! forwards no hop-by-hop `Connection`/`Keep-Alive` from the backend.

#![no_main]

use libfuzzer_sys::fuzz_target;
use worker_http::fields::MAX_HEADERS;
use worker_http::head::{end_response, parse_response, Parsed, Persist};

fuzz_target!(|data: &[u8]| {
    // The request method and our persistence vary with the input's length.
    let head_request = data.len() % 2 == 1;
    let persist = [Persist::Close, Persist::KeepAlive10, Persist::KeepAlive11][data.len() / 2 % 3];
    let mut out = Vec::new();
    let resp = match parse_response(data, head_request, &mut out) {
        Ok(Parsed::Complete(r)) => r,
        Ok(Parsed::Partial) => {
            assert!(out.is_empty(), "partial head wrote output");
            return;
        }
        Err(_) => return,
    };
    assert!(resp.len <= data.len(), "head longer than its input");
    end_response(resp.status, persist, &mut out);

    // At most MAX_HEADERS lines: what we forward passes our own limit.
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut back = httparse::Response::new(&mut slots);
    match back.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len(), "client head has trailing bytes")
        }
        other => panic!(
            "client head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(back.code, Some(resp.status));
    if resp.status != 101 {
        let ours = if resp.status >= 200 && persist != Persist::KeepAlive11 {
            1
        } else {
            0
        };
        let conn = back
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .count();
        assert_eq!(conn, ours, "backend's Connection header reached the client");
        assert!(!back
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("keep-alive")));
    }

    let mut again_out = Vec::new();
    match parse_response(&out, head_request, &mut again_out) {
        Ok(Parsed::Complete(again)) => {
            assert_eq!(again.len, out.len());
            assert_eq!(again.status, resp.status);
            assert_eq!(
                again.framing, resp.framing,
                "client would frame the body differently"
            );
        }
        other => panic!(
            "client head refused by our own parser: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
});
