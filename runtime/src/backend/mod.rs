//! Reaching a backend: a non-blocking connect to `IP:PORT` or to a unix
//! socket inside the provider's root, and the short retry while a provider
//! container restarts (connect refused, socket file not there yet).
//!
//! - `roots.rs`: the provider roots (the fd table unix backends in
//!   containers are reached through).
//! - `connect.rs`: the connect calls, what their errors mean, the delays
//!   between retries.
//! - `reach.rs`: [`Reach`], what dialling changes beyond one connection
//!   (roots, health table, hold book, replicas' book), owned by the loop.
//! - `dialer.rs`: [`Dialer`], one connection's way to its backend (retry,
//!   hold; its network in `dialer/net.rs`, its hold in
//!   `dialer/holding.rs`, its replicas in `dialer/replicas.rs`).

mod connect;
mod dialer;
mod reach;
mod roots;
#[cfg(test)]
mod tests;

pub use connect::{busy_delay, connect, is_absent, is_busy, is_retryable, retry_delay};
pub use dialer::{Dial, Dialer, Net, Real, Step};
pub use reach::Reach;
pub use roots::{split_provider_path, Roots};
