//! pvx-worker-unix: serves one unix link of pv-xconnect: a socket planted
//! in the consumer's mount namespace, relayed (bytes and `SCM_RIGHTS` fds)
//! to the provider's socket. Started by the supervisor only (fd 3 =
//! control socket); the argv is just for `ps`:
//! `pvx-worker-unix /run/app/display.sock consumer=app`.
//!
//! The loop is proto's (`proto::event_loop`); this worker brings the
//! connection (`conn.rs`) and its fd-carrying relay (`relay.rs`).

use worker_unix::conn;

fn main() {
    proto::event_loop::main::<conn::Conn>("unix")
}
