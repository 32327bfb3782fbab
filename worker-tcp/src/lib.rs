//! The worker-tcp library: the `pvx-worker-tcp` process ([`main`], which
//! the one `pv-xconnect` binary runs when started under that name), its
//! modules, reachable from the fuzz targets in `fuzz/` and unit tests.

pub mod conn;
/// Lives in runtime (the health checks send it too); named here as before.
pub use runtime::proxy_header;
pub mod sni;

/// The worker's process: runs as `pvx-worker-tcp <listen> consumer=<name>`,
/// started by the supervisor only (fd 3 = control socket; argv is just for
/// `ps`). The loop is runtime's (`runtime::event_loop`, connections plugged in
/// through `runtime::conns`); this crate brings the connection: `conn.rs`
/// (states), `sni.rs`; the PROXY header is `runtime::proxy_header`.
pub fn main() -> ! {
    runtime::event_loop::main::<runtime::conns::Conns<conn::Conn>>("tcp")
}
