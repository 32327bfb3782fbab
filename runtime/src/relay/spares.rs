//! [`Spares`]: what a worker's splice relays take and give back, owned by
//! the worker loop and lent to every pump (`Cx::spares`): the pipes
//! (`--pipe-size`, the spare ones, `crate::pipes`) and the spare copy
//! buffers.

use super::copy::{COPY_CHUNK, SPARE_BUFFERS};
use crate::pipes::Pipes;

/// The splice relays' pipes and copy buffers (see the module docs).
#[derive(Debug, Default)]
pub struct Spares {
    pub pipes: Pipes,
    /// At most [`SPARE_BUFFERS`], each [`COPY_CHUNK`] bytes.
    buffers: Vec<Vec<u8>>,
}

impl Spares {
    /// A [`COPY_CHUNK`] buffer, spare or new.
    pub(super) fn take_buffer(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_else(|| vec![0u8; COPY_CHUNK])
    }

    /// Keep a buffer for the next read (a prefix of another size is
    /// dropped).
    pub(super) fn give_buffer(&mut self, buf: Vec<u8>) {
        if buf.len() == COPY_CHUNK && self.buffers.len() < SPARE_BUFFERS {
            self.buffers.push(buf);
        }
    }
}
