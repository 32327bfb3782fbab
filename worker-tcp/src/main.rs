//! pvx-worker-tcp: serves one tcp endpoint of pv-xconnect. Started by the
//! supervisor only (fd 3 = control socket); the argv is just for `ps`:
//! `pvx-worker-tcp 0.0.0.0:8080 consumer=EXTERNAL`.
//!
//! The loop is proto's (`proto::event_loop`); this worker brings the
//! connection: `conn.rs` (states), `sni.rs`, `proxy_header.rs`.

use worker_tcp::conn;

fn main() {
    proto::event_loop::main::<conn::Conn>("tcp")
}
