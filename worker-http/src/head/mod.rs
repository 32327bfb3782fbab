//! Request and response heads: parse with httparse, decide framing and
//! persistence, and write the head that goes on the wire. By job:
//! `request.rs` parses and checks a request head, `forward.rs` writes the
//! head its backend gets, `response.rs` parses a response head and writes
//! the one the client gets; here is what they share (the `Connection`
//! tokens, the field line writer).
//!
//! Pure functions over byte slices, so they are unit-tested here and easy
//! to fuzz. Requests are validated strictly (BEHAVIOUR §5): anything a backend
//! could frame differently from us is refused before it is forwarded.

mod forward;
mod request;
mod response;

pub use forward::{write_request, Client};
pub use request::{parse_request, Reject, Request};
pub use response::{end_response, parse_response, Persist, Response};

fn eq_any(name: &str, list: &[&str]) -> bool {
    list.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// Outcome of looking for a head in the bytes received so far.
#[derive(Debug)]
pub enum Parsed<T> {
    Complete(T),
    /// Need more bytes.
    Partial,
}

/// Headers a client may not make disappear by naming them in `Connection`.
const END_TO_END: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
];

/// The tokens of a head's `Connection` lines, in place in the head: no
/// copy and, for the usual one to four tokens, no allocation. Compared
/// case-insensitively.
struct Tokens<'h> {
    few: [&'h [u8]; 4],
    n: usize,
    rest: Vec<&'h [u8]>,
}

impl<'h> Tokens<'h> {
    fn iter(&self) -> impl Iterator<Item = &'h [u8]> + '_ {
        self.few[..self.n].iter().chain(&self.rest).copied()
    }

    fn has(&self, token: &str) -> bool {
        self.iter()
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }
}

fn connection_tokens<'h>(headers: &[httparse::Header<'h>]) -> Tokens<'h> {
    let mut t = Tokens {
        few: [&[]; 4],
        n: 0,
        rest: Vec::new(),
    };
    let values = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty());
    for v in values {
        match t.few.get_mut(t.n) {
            Some(slot) => {
                *slot = v;
                t.n += 1;
            }
            None => t.rest.push(v),
        }
    }
    t
}

/// One field line.
fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
