//! The worker-tcp library: its modules, reachable from the binary in
//! `main.rs`, the fuzz targets in `fuzz/` and unit tests.

pub mod conn;
pub mod proxy_header;
pub mod sni;
