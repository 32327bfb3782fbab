//! A direction's error that says its side (source or destination).

use crate::duplex::Side;
use std::io;

/// A failed syscall of a direction, carried inside the `io::Error` that
/// `pump` returns so callers can tell a reader's fault from a writer's
/// without reading text.
#[derive(Debug)]
pub struct SpliceError {
    pub side: Side,
    pub error: io::Error,
}

impl std::fmt::Display for SpliceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The error names its syscall ("splice to destination: EPIPE").
        write!(f, "{}", self.error)
    }
}

impl std::error::Error for SpliceError {}

impl SpliceError {
    /// The side an error from [`Splice::pump`] failed on, if it was a splice.
    pub fn side_of(e: &io::Error) -> Option<Side> {
        e.get_ref()?.downcast_ref::<SpliceError>().map(|s| s.side)
    }
}

pub(super) fn failed(side: Side, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), SpliceError { side, error })
}
