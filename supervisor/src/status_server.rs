//! The status socket: HTTP/1.1 on a unix socket (default
//! `/run/pv-xconnect/status.sock`, mode 0600), served by the supervisor's
//! own mio loop.
//!
//! Nothing here may block or grow without bound: sockets are
//! non-blocking, a request head is at most [`MAX_REQUEST`] bytes, at most
//! [`MAX_CLIENTS`] clients are held at once, a client has
//! [`HEAD_TIMEOUT`] to send its request head and then [`WRITE_TIMEOUT`]
//! to take the answer, and each answer ends the connection
//! (`Connection: close`). When all places are taken, a new client pushes
//! out the oldest one still without a complete request, so idle
//! connections cannot lock the operator out.
//!
//! `GET /status` -> JSON, `GET /metrics` -> Prometheus text, any other
//! path 404, any other method 405.

use crate::metrics;
use crate::status::Snapshot;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_PATH: &str = "/run/pv-xconnect/status.sock";
pub const MAX_REQUEST: usize = 8 * 1024;
pub const MAX_CLIENTS: usize = 128;
/// From accept to a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// From the answer being ready to its last byte taken by the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The listener's token; clients use the top of the token space, far from
/// the worker tokens that count up from 16.
pub const LISTENER: Token = Token(1);
const CLIENT_BASE: usize = usize::MAX - MAX_CLIENTS;

pub fn owns(t: Token) -> bool {
    t == LISTENER || t.0 >= CLIENT_BASE
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The head is not complete yet (and not over [`MAX_REQUEST`]).
    Incomplete,
    /// Not HTTP (400).
    Malformed,
    /// A head over [`MAX_REQUEST`] bytes (431).
    TooLarge,
    /// `GET /status`.
    Status,
    /// `GET /metrics`.
    Metrics,
    /// `GET` of another path (404).
    NotFound,
    /// Another method (405).
    NotAllowed,
}

/// Read the bytes a client sent so far: the request they make, if they
/// make one yet. Pure; the status socket's only parser of client bytes.
pub fn parse_request(req: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(req) {
        Ok(httparse::Status::Partial) if req.len() > MAX_REQUEST => return Request::TooLarge,
        Ok(httparse::Status::Partial) => return Request::Incomplete,
        Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST => return Request::TooLarge,
        Ok(httparse::Status::Complete(_)) => {}
        Err(_) => return Request::Malformed,
    }
    let path = r.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    match (r.method, path) {
        (Some("GET"), "/status") => Request::Status,
        (Some("GET"), "/metrics") => Request::Metrics,
        (Some("GET"), _) => Request::NotFound,
        _ => Request::NotAllowed,
    }
}

struct Client {
    sock: UnixStream,
    accepted: Instant,
    /// HEAD_TIMEOUT after accept, then WRITE_TIMEOUT after the answer.
    deadline: Instant,
    req: Vec<u8>,
    /// The answer, once the request is complete; `sent` bytes are out.
    resp: Option<Vec<u8>>,
    sent: usize,
}

pub struct StatusServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's inode, to remove it at exit only if still ours.
    ino: u64,
    clients: BTreeMap<usize, Client>,
    /// Where the search for a free client slot starts: slots go round, so
    /// a slot just freed is not reused at once.
    next_slot: usize,
}

impl StatusServer {
    /// Bind `path` (creating its directory, replacing a stale socket) and
    /// register it. A socket another live supervisor answers on is left
    /// alone: that is an error, not something to steal.
    pub fn bind(path: &Path, registry: &Registry) -> Result<StatusServer, String> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("status socket: mkdir -p {}: {e}", dir.display()))?;
                // Only root reads the status; keep the directory private too.
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(format!(
                        "status socket {shown}: another pv-xconnect is answering there"
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| format!("status socket: removing stale {shown}: {e}"))?;
            }
            Ok(_) => return Err(format!("status socket {shown} exists and is not a socket")),
            Err(_) => {}
        }
        // umask first so the socket is never reachable by others, not even
        // between bind() and chmod(); the supervisor is single-threaded.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let mut listener = bound.map_err(|e| format!("status socket: bind {shown}: {e}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("status socket: chmod 0600 {shown}: {e}"))?;
        let ino = std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0);
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("status socket: epoll_ctl: {e}"))?;
        Ok(StatusServer {
            listener,
            path: path.to_path_buf(),
            ino,
            clients: BTreeMap::new(),
            next_slot: CLIENT_BASE,
        })
    }

    /// Handle readiness of the listener or a client. `snapshot` is called
    /// only when a complete request needs it.
    pub fn on_event(&mut self, registry: &Registry, t: Token, snapshot: impl Fn() -> Snapshot) {
        if t == LISTENER {
            self.accept(registry, &snapshot);
            return;
        }
        let slot = t.0;
        let Some(c) = self.clients.get_mut(&slot) else {
            return;
        };
        if serve(c, &snapshot) {
            self.clients.remove(&slot);
        }
    }

    /// Drop clients whose time is up (called every loop turn).
    pub fn sweep(&mut self, now: Instant) {
        self.clients.retain(|_, c| now < c.deadline);
    }

    /// The earliest client deadline: the loop must wake for it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().map(|c| c.deadline).min()
    }

    fn accept(&mut self, registry: &Registry, snapshot: &impl Fn() -> Snapshot) {
        loop {
            let (mut sock, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds and the like: the next readiness retries;
                    // the loop has other work and must not spin here.
                    proto::warn!("status socket: accept: {e}");
                    return;
                }
            };
            self.make_room(snapshot);
            let Some(slot) = self.free_slot() else {
                continue;
            };
            if let Err(e) = registry.register(
                &mut sock,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                proto::warn!("status socket: epoll_ctl: {e}");
                continue;
            }
            let now = Instant::now();
            self.clients.insert(
                slot,
                Client {
                    sock,
                    accepted: now,
                    deadline: now + HEAD_TIMEOUT,
                    req: Vec::new(),
                    resp: None,
                    sent: 0,
                },
            );
        }
    }

    /// With every place taken, push out the client that waited longest
    /// without a complete request (after one last look at what it sent:
    /// a request that arrived is answered rather than lost). Only when all
    /// of them are taking answers does the oldest of those go.
    fn make_room(&mut self, snapshot: &impl Fn() -> Snapshot) {
        while self.clients.len() >= MAX_CLIENTS {
            let idle = self
                .clients
                .iter()
                .filter(|(_, c)| c.resp.is_none())
                .min_by_key(|(_, c)| c.accepted)
                .map(|(s, _)| *s);
            let Some(slot) = idle else {
                let oldest = self
                    .clients
                    .iter()
                    .min_by_key(|(_, c)| c.accepted)
                    .map(|(s, _)| *s);
                if let Some(s) = oldest {
                    proto::debug!(
                        "status socket: {MAX_CLIENTS} clients taking answers; closing the oldest"
                    );
                    self.clients.remove(&s);
                }
                continue;
            };
            let Some(c) = self.clients.get_mut(&slot) else {
                return;
            };
            if serve(c, snapshot) {
                self.clients.remove(&slot);
            } else if c.resp.is_none() {
                proto::debug!(
                    "status socket: {MAX_CLIENTS} clients held; closing the oldest idle one"
                );
                self.clients.remove(&slot);
            }
        }
    }

    fn free_slot(&mut self) -> Option<usize> {
        for _ in 0..MAX_CLIENTS {
            let slot = self.next_slot;
            self.next_slot = if slot == usize::MAX - 1 {
                CLIENT_BASE
            } else {
                slot + 1
            };
            if !self.clients.contains_key(&slot) {
                return Some(slot);
            }
        }
        None
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one we bound.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Read what is there, answer once the head is complete, write what fits.
/// true: the client is done (answered or gone) and must be dropped.
fn serve(c: &mut Client, snapshot: &impl Fn() -> Snapshot) -> bool {
    if c.resp.is_none() {
        let mut buf = [0u8; 2048];
        loop {
            match c.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    c.req.extend_from_slice(&buf[..n]);
                    if let Some(r) = answer(&c.req, snapshot) {
                        c.resp = Some(r);
                        c.deadline = Instant::now() + WRITE_TIMEOUT;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }
    let Some(resp) = &c.resp else {
        return false;
    };
    while c.sent < resp.len() {
        match c.sock.write(&resp[c.sent..]) {
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    true
}

/// The answer to a complete request head, or None while it is incomplete.
pub fn answer(req: &[u8], snapshot: &impl Fn() -> Snapshot) -> Option<Vec<u8>> {
    Some(match parse_request(req) {
        Request::Incomplete => return None,
        Request::Malformed => response(400, "text/plain", b"bad request\n"),
        Request::TooLarge => response(431, "text/plain", b"request too large\n"),
        Request::Status => response(200, "application/json", &snapshot().to_json()),
        Request::Metrics => response(
            200,
            metrics::CONTENT_TYPE,
            metrics::render(&snapshot()).as_bytes(),
        ),
        Request::NotFound => response(404, "text/plain", b"not found; try /status or /metrics\n"),
        Request::NotAllowed => response(405, "text/plain", b"method not allowed; use GET\n"),
    })
}

fn response(code: u16, ctype: &str, body: &[u8]) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let allow = if code == 405 { "Allow: GET\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::SupervisorInfo;

    fn empty() -> Snapshot {
        Snapshot {
            supervisor: SupervisorInfo {
                pid: 1,
                version: "0",
                uptime_s: 0,
                log_dropped: 0,
            },
            endpoints: vec![],
            draining: vec![],
            refused: vec![],
        }
    }

    fn status_of(r: &[u8]) -> String {
        String::from_utf8_lossy(r)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn routes_methods_and_partial_heads() {
        let a = |r: &[u8]| answer(r, &empty).map(|x| status_of(&x));
        assert_eq!(a(b"GET /status HTTP/1.1\r\n"), None);
        assert_eq!(
            a(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            a(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap(),
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            a(b"GET /nope HTTP/1.1\r\n\r\n").unwrap(),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            a(b"POST /status HTTP/1.1\r\n\r\n").unwrap(),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            a(b"\x00\x01garbage\r\n\r\n").unwrap(),
            "HTTP/1.1 400 Bad Request"
        );
        let ok = answer(b"GET /status HTTP/1.1\r\n\r\n", &empty).unwrap();
        let text = String::from_utf8(ok).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Connection: close"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["endpoints"].as_array().unwrap().is_empty());
    }

    #[test]
    fn parse_request_bounds_the_head() {
        assert_eq!(parse_request(b""), Request::Incomplete);
        assert_eq!(parse_request(b"GET /sta"), Request::Incomplete);
        assert_eq!(
            parse_request(b"GET /status?x HTTP/1.1\r\n\r\n"),
            Request::Status
        );
        assert_eq!(
            parse_request(b"HEAD / HTTP/1.1\r\n\r\n"),
            Request::NotAllowed
        );
        let mut big = b"GET /status HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_REQUEST + 1, b'a');
        assert_eq!(parse_request(&big), Request::TooLarge);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&big), Request::TooLarge);
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        let req = format!("GET /status HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(req.as_bytes()), Request::Malformed);
    }
}
