//! The supervisor library: the `pv-xconnect` process ([`entry::main`],
//! which the one binary runs under any name but a worker's), its modules,
//! reachable from the fuzz targets in `fuzz/` and unit tests.

pub mod check;
pub mod cli;
pub mod daemon;
pub mod endpoint;
pub mod entry;
pub mod http_client;
pub mod listener;
pub mod metrics;
pub mod pending;
pub mod policy;
pub mod privileges;
pub mod roots;
pub mod route_counts;
pub mod sockfile;
pub mod source;
pub mod spawn;
pub mod status;
pub mod status_cli;
pub mod status_server;
