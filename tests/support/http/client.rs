//! Raw HTTP/1.1 client helpers for what curl will not send (smuggling
//! attempts, pipelining, trickled heads) and for reading exact bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to proxy");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Read one response from `s`, framing by Content-Length, chunked or
/// close. `head_req`: the request was HEAD. `buf` carries bytes read past
/// a previous response (pipelining).
pub fn read_resp(s: &mut TcpStream, buf: &mut Vec<u8>, head_req: bool) -> Option<Resp> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, buf) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end);
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let mut r = Resp {
        status,
        head,
        body: Vec::new(),
    };
    if head_req || status == 204 || status == 304 || (100..200).contains(&status) {
        return Some(r);
    }
    if r.header("transfer-encoding").is_some() {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                if !fill(s, buf) {
                    return None;
                }
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[..line_end])
                    .ok()?
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                if !fill(s, buf) {
                    return None;
                }
            }
            if size == 0 {
                // No trailers in these tests: the final CRLF.
                buf.drain(..2);
                return Some(r);
            }
            r.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(n) = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while buf.len() < n {
            if !fill(s, buf) {
                return None;
            }
        }
        r.body = buf.drain(..n).collect();
    } else {
        while fill(s, buf) {}
        r.body = std::mem::take(buf);
    }
    Some(r)
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    match s.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Send raw bytes, read one response.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> (Resp, TcpStream) {
    let mut s = connect(addr);
    s.write_all(raw).expect("send request");
    let mut buf = Vec::new();
    let r = read_resp(&mut s, &mut buf, raw.starts_with(b"HEAD ")).expect("a response");
    (r, s)
}

/// Whether the peer closes the connection (EOF) within `within`, with no
/// further bytes.
pub fn closed(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let end = Instant::now() + within;
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) if Instant::now() >= end => return false,
            Err(_) => {}
        }
    }
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}
