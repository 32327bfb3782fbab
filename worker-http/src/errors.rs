//! The worker's own answers: short, complete HTTP/1.1 responses, always
//! with `Connection: close` (after an error the worker closes the client
//! connection rather than guess where the next request starts).

/// Reason phrase and one-line body for each status the worker generates.
fn text(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("Bad Request", "bad request\n"),
        404 => ("Not Found", "no route for this request\n"),
        408 => ("Request Timeout", "request head not received in time\n"),
        431 => (
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        502 => ("Bad Gateway", "backend unreachable or invalid response\n"),
        503 => ("Service Unavailable", "service unavailable\n"),
        504 => ("Gateway Timeout", "backend did not answer in time\n"),
        _ => ("Error", "error\n"),
    }
}

/// The full response for `status`. `head_only`: the request was HEAD, so
/// the body is left out (its length still announced).
pub fn response(status: u16, head_only: bool) -> Vec<u8> {
    let (reason, body) = text(status);
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_complete_and_close() {
        for s in [400, 404, 408, 431, 502, 503, 504] {
            let r = response(s, false);
            let mut hs = [httparse::EMPTY_HEADER; 8];
            let mut p = httparse::Response::new(&mut hs);
            let n = match p.parse(&r).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial {s}"),
            };
            assert_eq!(p.code, Some(s));
            let cl: usize = p
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            assert_eq!(r.len() - n, cl);
            assert!(p
                .headers
                .iter()
                .any(|h| h.name == "Connection" && h.value == b"close"));
            assert_eq!(response(s, true).len(), n);
        }
    }
}
