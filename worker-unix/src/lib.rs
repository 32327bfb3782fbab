//! The worker-unix library: the `pvx-worker-unix` process ([`main`], which
//! the one `pv-xconnect` binary runs when started under that name), its
//! modules, reachable from the fuzz targets in `fuzz/` and unit tests.

pub mod conn;

/// The worker's process: serves one unix link, a socket planted in the
/// consumer's mount namespace relayed (bytes and `SCM_RIGHTS` fds) to the
/// provider's socket. Runs as `pvx-worker-unix /run/app/display.sock
/// consumer=app`, started by the supervisor only (fd 3 = control socket).
pub fn main() -> ! {
    runtime::event_loop::main::<runtime::conns::Conns<conn::Conn>>("unix")
}
