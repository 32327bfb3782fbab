//! The worker-http library: the `pvx-worker-http` process ([`main`], which
//! the one `pv-xconnect` binary runs when started under that name), its
//! modules, reachable from the fuzz targets in `fuzz/` and unit tests.

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

/// The worker's process: serves one http or rest endpoint and all the
/// http links (routes) on it (docs/HTTP.md). Runs as `pvx-worker-http
/// 0.0.0.0:80 consumer=EXTERNAL`, started by the supervisor only (fd 3 =
/// control socket; argv is just for `ps`).
pub fn main() -> ! {
    let started = match proto::worker::start("http") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let ep = &started.config.endpoint;
    proto::info!(
        "serving {} endpoint {} for {} with {} route(s)",
        ep.kind,
        ep.key,
        ep.consumer,
        ep.routes.len()
    );
    let worker = match event_loop::Worker::new(started) {
        Ok(w) => w,
        Err(e) => {
            proto::error!("cannot set up the event loop: {e}");
            std::process::exit(1);
        }
    };
    proto::mem::trim_code();
    std::process::exit(worker.run());
}
