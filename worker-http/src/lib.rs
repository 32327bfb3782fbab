//! The worker-http library: its modules, reachable from the binary in
//! `main.rs`, the fuzz targets in `fuzz/` and unit tests.

#![forbid(unsafe_code)]

pub mod body;
pub mod buf;
pub mod conn;
pub mod dial;
pub mod errors;
pub mod event_loop;
pub mod exchange;
pub mod fields;
pub mod framing;
pub mod head;
pub mod keys;
pub mod pool;
pub mod route;
pub mod tunnel;
