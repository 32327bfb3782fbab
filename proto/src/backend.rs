//! Reaching a backend: a non-blocking connect to `IP:PORT` or to a unix
//! socket inside the provider's root, and the short retry while a provider
//! container restarts (connect refused, socket file not there yet).

use crate::graph::Backend;
use crate::stream::Stream;
use mio::net::{TcpStream, UnixStream};
use std::io;
use std::time::Duration;

/// Start connecting. A tcp connect is usually still in progress on return
/// (wait for writable, then [`Stream::connect_done`]); a unix connect has
/// already succeeded or failed.
pub fn connect(b: &Backend) -> io::Result<Stream> {
    match b {
        Backend::Tcp(addr) => TcpStream::connect(*addr).map(Stream::Tcp),
        Backend::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
    }
}

/// Errors that mean "the provider is not listening yet": worth a retry.
pub fn is_retryable(e: &io::Error) -> bool {
    use nix::libc::{EAGAIN, ECONNREFUSED, ENOENT};
    matches!(
        e.raw_os_error(),
        Some(ECONNREFUSED) | Some(ENOENT) | Some(EAGAIN)
    )
}

/// Delay before retry number `attempt` (1-based): 25, 50, 100, 200 ms ...,
/// or None once the delays so far would exceed `budget_ms` in all.
pub fn retry_delay(attempt: u32, budget_ms: u64) -> Option<Duration> {
    let mut spent = 0u64;
    let mut d = 25u64;
    for _ in 1..attempt {
        spent += d;
        d *= 2;
    }
    if attempt == 0 || spent + d > budget_ms {
        return None;
    }
    Some(Duration::from_millis(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_is_bounded() {
        let ds: Vec<u64> = (1..10)
            .map_while(|a| retry_delay(a, 400))
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(ds, vec![25, 50, 100, 200]);
        assert_eq!(retry_delay(1, 0), None);
    }

    #[test]
    fn unix_connect_to_missing_socket_is_retryable() {
        let e = connect(&Backend::Unix("/nonexistent/pvx-test.sock".into())).unwrap_err();
        assert!(is_retryable(&e));
    }
}
