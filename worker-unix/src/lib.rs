//! The worker-unix library: its modules, reachable from the binary in
//! `main.rs`, the fuzz targets in `fuzz/` and unit tests.

pub mod conn;
