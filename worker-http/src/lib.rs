//! The worker-http library: the `pvx-worker-http` process ([`main`], which
//! the one `pv-xconnect` binary runs when started under that name), its
//! modules, reachable from the fuzz targets in `fuzz/` and unit tests.

#![forbid(unsafe_code)]

pub mod body;
pub mod buf;
pub mod conn;
pub mod conns;
pub mod errors;
pub mod fields;
pub mod framing;
pub mod head;
pub mod keys;
pub mod pool;
pub mod route;

/// The worker's process: serves one http or rest endpoint and all the
/// http links (routes) on it (README, "HTTP ingress"). Runs as `pvx-worker-http
/// 0.0.0.0:80 consumer=EXTERNAL`, started by the supervisor only (fd 3 =
/// control socket; argv is just for `ps`). The loop is runtime's
/// (`runtime::event_loop`); `conns.rs` plugs this worker's connections in.
pub fn main() -> ! {
    runtime::event_loop::main::<conns::Conns>("http")
}
