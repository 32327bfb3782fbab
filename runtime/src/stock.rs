//! [`Stock`]: what the worker loop lends its data path with every call
//! (`Cx::stock`), so that none of it is reached around the loop: the relay
//! pipes (`--pipe-size`, the spare ones: [`crate::pipes`]), the spare copy
//! buffers of a splice direction (`relay.rs`), a scratch area for one call
//! (tcp peeks ClientHellos into it), and the count of fds the unix relays
//! hold in flight (`fdrelay.rs`).
//!
//! The fd count is kept by ownership: each fd a relay holds carries a
//! share of it (an `Rc`), so an fd closed wherever its relay is dropped
//! (its connection closed, no stock at hand) leaves the count by itself
//! ([`Rc::strong_count`]).

use crate::pipes::Pipes;
use std::rc::Rc;

/// The copy buffer's size, and the most one `read` takes.
pub const COPY_CHUNK: usize = 16 * 1024;
/// Copy buffers a worker keeps between uses (one is the usual need: a
/// chunk normally goes out in the same turn it came in).
pub const SPARE_BUFFERS: usize = 2;

/// The data path's stock (see the module docs).
#[derive(Debug, Default)]
pub struct Stock {
    pub pipes: Pipes,
    /// At most [`SPARE_BUFFERS`], each [`COPY_CHUNK`] bytes.
    buffers: Vec<Vec<u8>>,
    /// Grown (and zeroed) at its first use; what it holds means nothing
    /// to the next call.
    scratch: Vec<u8>,
    /// The stock's share of the fd count: every fd held has another.
    fds_held: Rc<()>,
}

impl Stock {
    /// A [`COPY_CHUNK`] buffer, spare or new.
    pub(crate) fn take_buffer(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_else(|| vec![0u8; COPY_CHUNK])
    }

    /// Keep a buffer for the next read (a prefix of another size is
    /// dropped).
    pub(crate) fn give_buffer(&mut self, buf: Vec<u8>) {
        if buf.len() == COPY_CHUNK && self.buffers.len() < SPARE_BUFFERS {
            self.buffers.push(buf);
        }
    }

    /// `len` bytes to use within one call, none zeroed per call nor kept
    /// per connection.
    pub fn scratch(&mut self, len: usize) -> &mut [u8] {
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        &mut self.scratch[..len]
    }

    /// Fds the relays hold now (read, not yet taken by their destination).
    pub fn fds_held(&self) -> usize {
        Rc::strong_count(&self.fds_held) - 1
    }

    /// A share of the fd count, for one fd a relay holds until it drops it.
    pub(crate) fn count_fd(&self) -> Rc<()> {
        self.fds_held.clone()
    }
}
