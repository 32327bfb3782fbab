//! pv-xconnect's worker runtime: what only workers run. The supervisor
//! never links it; both speak `proto`, the vocabulary (graph, plan, control
//! messages, fd passing, logging), which names nothing here
//! (`tests/layers.rs` at the root keeps it so).
//!
//! - [`worker`]: worker start-up, the worker's control end.
//! - [`stream`] (sockets and their readiness), [`accept`], [`backend`],
//!   [`balance`], [`slab`]: the data path every worker shares.
//! - [`duplex`]: the one duplex relay (half-close and failure rules) over
//!   [`relay`] (copy, then splice once a flow is bulk, through [`pipes`])
//!   and [`fdrelay`] (bytes and fds of a unix link).
//! - [`event_loop`]: the one worker loop (listener, control messages,
//!   timers, stats, drain, health checks); [`conns`]: the tcp and unix
//!   workers' connections plugged into it.
//! - [`health`]: each checked backend's state (the table); [`prober`]:
//!   the L4 checks that fill it.
//! - [`proxy_header`]: the PROXY protocol header (tcp links, their checks).
//! - [`hold`]: connections held while their provider comes back.
//! - [`stock`]: what the loop lends the data path (pipes, copy buffers,
//!   a scratch area, the count of fds in flight).

pub mod accept;
pub mod backend;
pub mod balance;
pub mod conns;
pub mod duplex;
pub mod event_loop;
pub mod fdrelay;
pub mod health;
pub mod hold;
pub mod pipes;
pub mod prober;
pub mod proxy_header;
pub mod relay;
pub mod slab;
pub mod stock;
pub mod stream;
pub mod worker;
