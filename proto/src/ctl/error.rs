//! What can go wrong on the control channel, from the socket to the JSON:
//! one type, so every caller tells a closed peer from a bad message.

use crate::limits::MAX_FDS;
use nix::errno::Errno;
use std::fmt;

#[derive(Debug)]
pub enum CtlError {
    /// The peer closed the socket.
    Eof,
    /// Non-blocking socket has nothing (recv) or no room (send).
    WouldBlock,
    Sys(&'static str, Errno),
    /// A message body (or datagram) of this many bytes is over its cap.
    TooLarge(usize),
    Truncated,
    TooManyFds,
    FdCount {
        expected: usize,
        got: usize,
    },
    Bad(String),
    /// A blob whose memfd is refused (unsealed, not a memfd, wrong size).
    Blob(String),
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Eof => write!(f, "control socket closed"),
            CtlError::WouldBlock => write!(f, "control socket would block"),
            CtlError::Sys(call, e) => write!(f, "{call} on control socket: {e}"),
            CtlError::TooLarge(n) => write!(f, "control message of {n} bytes is over its cap"),
            CtlError::Truncated => write!(f, "control message truncated (MSG_TRUNC/MSG_CTRUNC)"),
            CtlError::TooManyFds => write!(f, "more than {MAX_FDS} fds attached"),
            CtlError::FdCount { expected, got } => {
                write!(f, "message needs {expected} fds, {got} attached")
            }
            CtlError::Bad(e) => write!(f, "malformed control message: {e}"),
            CtlError::Blob(e) => write!(f, "control message blob refused: {e}"),
        }
    }
}

impl std::error::Error for CtlError {}
