//! One `GET /xconnect-graph` on Pantavisor's control socket, driven by
//! the supervisor loop's readiness events so that a stalled Pantavisor
//! never blocks it (`source.rs` owns the deadline and the outage).

use super::TOKEN;
use crate::http_client::{Answer, Reader};
use mio::net::UnixStream;
use mio::{Interest, Registry};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest graph answer accepted (a graph is a few KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
const REQUEST: &[u8] = b"GET /xconnect-graph HTTP/1.0\r\nHost: localhost\r\n\r\n";

/// One `GET /xconnect-graph HTTP/1.0` on the control socket, driven by
/// readiness: the request is written and the answer read as far as the
/// socket allows, never waiting.
pub(super) struct Exchange {
    sock: UnixStream,
    pub(super) deadline: Instant,
    /// Request bytes sent so far.
    sent: usize,
    /// The answer, as far as it came.
    answer: Reader,
    /// Started by start-up or SIGHUP: applied even if unchanged.
    pub(super) force: bool,
}

impl Exchange {
    /// Connect without blocking (a Pantavisor whose backlog is full fails
    /// at once) and register for readiness under [`TOKEN`].
    pub(super) fn start(
        path: &Path,
        registry: &Registry,
        timeout: Duration,
        force: bool,
    ) -> Result<Exchange, String> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        let addr = UnixAddr::new(path).map_err(|e| format!("address: {e}"))?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                return Err("connect: backlog full (not accepting)".into())
            }
            Err(e) => return Err(format!("connect: {e}")),
        }
        let mut sock = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd));
        registry
            .register(&mut sock, TOKEN, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        Ok(Exchange {
            sock,
            deadline: Instant::now() + timeout,
            sent: 0,
            answer: Reader::new(MAX_BODY),
            force,
        })
    }

    /// What it was waiting for, for a timeout's message.
    pub(super) fn stage(&self) -> &'static str {
        match (self.sent < REQUEST.len(), self.answer.is_empty()) {
            (true, _) => "sending",
            (false, true) => "waiting for the answer",
            (false, false) => "reading the answer",
        }
    }

    /// Progress as far as the socket allows. None: not finished yet;
    /// otherwise the body of a 200 answer or why there is none.
    pub(super) fn advance(&mut self) -> Option<Result<String, String>> {
        while self.sent < REQUEST.len() {
            match self.sock.write(&REQUEST[self.sent..]) {
                Ok(0) => return Some(Err("sending request: socket closed".into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("sending request: {e}"))),
            }
        }
        let got = self.answer.read_from(&mut self.sock)?;
        Some(got.and_then(check_status))
    }

    pub(super) fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }
}

/// The graph in a 200 answer, or why there is none.
fn check_status(a: Answer) -> Result<String, String> {
    if a.code != 200 {
        let text = String::from_utf8_lossy(&a.body);
        let snippet: String = text.chars().take(120).collect();
        return Err(format!("answered {}: {}", a.code, snippet.trim()));
    }
    String::from_utf8(a.body).map_err(|_| "graph is not UTF-8".to_string())
}

#[cfg(test)]
mod tests;
