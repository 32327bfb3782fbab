//! The supervisor's one small HTTP/1.x client, for a GET on a unix
//! socket: the graph from pv-ctrl (`source.rs`, non-blocking, inside the
//! supervisor loop) and the answer of the status socket (`status_cli.rs`,
//! blocking with a timeout). The head is parsed by httparse (BEHAVIOUR §1); the
//! body ends at its Content-Length, or at EOF without one (HTTP/1.0);
//! head and body are bounded, so a runaway peer cannot fill our memory.

use std::io::{self, Read};

/// Largest answer head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// The request: HTTP/1.0, so the server closes after answering.
pub fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// A complete answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub code: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

/// Status, reason, body offset and Content-Length of a complete head.
type Head = (u16, String, usize, Option<usize>);

/// An answer being read, as far as it came.
pub struct Reader {
    buf: Vec<u8>,
    head: Option<Head>,
    max_body: usize,
}

impl Reader {
    pub fn new(max_body: usize) -> Reader {
        Reader {
            buf: Vec::new(),
            head: None,
            max_body,
        }
    }

    /// Nothing of the answer has come yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Read from `r` until the answer is complete, the peer closes, or a
    /// read would block (None: call again when `r` is readable; on a
    /// blocking socket with a read timeout, the timeout passed).
    pub fn read_from(&mut self, r: &mut impl Read) -> Option<Result<Answer, String>> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.framed() {
                Ok(Some(a)) => return Some(Ok(a)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match r.read(&mut chunk) {
                Ok(0) => return Some(self.at_eof()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("reading answer: {e}"))),
            }
        }
    }

    /// The answer once head and a Content-Length body are in; errors for
    /// what is too big or malformed.
    fn framed(&mut self) -> Result<Option<Answer>, String> {
        if self.head.is_none() {
            self.head = parse_head(&self.buf)?;
            if self.head.is_none() && self.buf.len() > MAX_HEAD {
                return Err(format!("answer head larger than {MAX_HEAD} bytes"));
            }
        }
        let max = self.max_body;
        match &self.head {
            Some((_, _, _, Some(len))) if *len > max => {
                Err(format!("answer larger than {max} bytes"))
            }
            Some((code, reason, at, Some(len))) if self.buf.len() >= at + len => Ok(Some(Answer {
                code: *code,
                reason: reason.clone(),
                body: self.buf[*at..at + len].to_vec(),
            })),
            Some((_, _, at, _)) if self.buf.len() - at > max => {
                Err(format!("answer larger than {max} bytes"))
            }
            _ => Ok(None),
        }
    }

    /// The peer closed: the answer if it is whole.
    fn at_eof(&self) -> Result<Answer, String> {
        match &self.head {
            None if self.buf.is_empty() => Err("closed without answering".into()),
            None => Err("closed in the middle of the answer head".into()),
            Some((_, _, at, Some(len))) if self.buf.len() < at + len => Err(format!(
                "closed after {} of {len} body bytes",
                self.buf.len() - at
            )),
            Some((code, reason, at, _)) => Ok(Answer {
                code: *code,
                reason: reason.clone(),
                body: self.buf[*at..].to_vec(),
            }),
        }
    }
}

/// A complete head, or None while partial. A chunked answer is refused:
/// both servers asked answer with a length or close.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let at = match resp.parse(buf) {
        Ok(httparse::Status::Complete(at)) => at,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed HTTP answer: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let reason = proto::text::escape(resp.reason.unwrap_or("")).into_owned();
    let mut len = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("malformed Content-Length")?;
            if len.is_some_and(|l| l != v) {
                return Err("conflicting Content-Length".into());
            }
            len = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("Transfer-Encoding in an answer to HTTP/1.0".into());
        }
    }
    Ok(Some((code, reason, at, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], max: usize) -> Result<Answer, String> {
        let mut r = Reader::new(max);
        r.read_from(&mut &bytes[..]).expect("a slice never blocks")
    }

    #[test]
    fn frames_by_length_or_eof() {
        let a = read_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]extra", 10).unwrap();
        assert_eq!((a.code, a.body), (200, b"[]".to_vec()));
        let a = read_all(b"HTTP/1.1 404 Not Found\r\n\r\nnone", 10).unwrap();
        assert_eq!(
            (a.code, a.reason.as_str(), a.body),
            (404, "Not Found", b"none".to_vec())
        );
    }

    #[test]
    fn refuses_what_lies_or_is_too_big() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "closed without answering"),
            (b"HTTP/1.0 200 OK\r\n", "middle of the answer head"),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nab",
                "closed after 2 of 5",
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n",
                "larger than 10",
            ),
            (b"HTTP/1.0 200 OK\r\n\r\n0123456789a", "larger than 10"),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting",
            ),
        ];
        for (bytes, want) in cases {
            let e = read_all(bytes, 10).unwrap_err();
            assert!(
                e.contains(want),
                "{e} for {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut big = b"HTTP/1.0 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 2, b'a');
        assert!(read_all(&big, 10).unwrap_err().contains("head larger"));
    }
}
