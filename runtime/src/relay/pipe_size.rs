//! The size of the pipes a worker makes (`--pipe-size`): set once from
//! its `Limits` at start, read whenever a direction takes a pipe.

use proto::limits::{default, MAX_PIPE_SIZE};
use std::sync::atomic::{AtomicUsize, Ordering};

static PIPE_SIZE: AtomicUsize = AtomicUsize::new(default::PIPE_SIZE);

/// Size of the pipes made from now on (a worker sets it once at start from
/// its `Limits`). The kernel rounds it up to a power of two pages.
pub fn set_pipe_size(bytes: usize) {
    PIPE_SIZE.store(bytes.clamp(1, MAX_PIPE_SIZE), Ordering::Relaxed);
}

pub fn pipe_size() -> usize {
    PIPE_SIZE.load(Ordering::Relaxed)
}
