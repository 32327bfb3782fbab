//! Supervisor <-> worker control protocol.
//!
//! Transport: an `AF_UNIX`/`SOCK_SEQPACKET` socketpair, inherited by the
//! worker as fd 3. One datagram = one message = one JSON object (readable in
//! `strace -s 512`), at most [`MAX_MSG`] bytes, with at most [`MAX_FDS`]
//! file descriptors attached by `SCM_RIGHTS`. Every message says how many
//! fds it carries; a count that does not match, a truncated datagram or a
//! truncated control message is an error and every fd that did arrive is
//! closed.
//!
//! A message whose JSON is over [`INLINE_MAX`] bytes (hundreds of routes,
//! a huge link name) travels as a *blob*: its JSON is written to a sealed
//! memfd, and the datagram is only `{"msg":"blob","len":N}` with that memfd
//! attached after the message's own fds. The receiver takes the memfd only
//! when it is sealed against every change (the sender can no longer alter
//! what we validated), holds exactly `len` bytes and `len` is within the
//! message type's cap, then decodes it like an inline message. So no valid
//! configuration is too large for the channel (docs/ARCHITECTURE.md,
//! "Control messages").
//!
//! One job per file: [`messages`] (what travels), `codec` (datagram
//! bytes <-> a message, pure), `blob` (the sealed memfd a large message
//! travels in), `channel` (the socket: send, receive, the pair), `error`,
//! [`route_stats`] (what a worker counts per route).
//! Their items are this module's: `proto::ctl::send`, `proto::ctl::ToWorker`.

mod blob;
mod channel;
mod codec;
mod error;
pub mod messages;
pub mod route_stats;
#[cfg(test)]
mod tests;

pub use blob::{read_blob, sealed_memfd};
pub use channel::{
    recv, recv_raw, recv_to_worker, send, send_blob, send_from_worker, send_raw, socketpair,
    WORKER_CTL_FD,
};
pub use codec::{decode, decode_frame, Frame};
pub use error::CtlError;
pub use messages::{FromWorker, Message, Stats, ToWorker, WorkerConfig, MAX_ROUTE_STATS};
pub use route_stats::{End, RouteStats, RouteWire, DURATION_BUCKETS_MS};
