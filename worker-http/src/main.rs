//! pvx-worker-http: the http and rest ingress worker of pv-xconnect.
//!
//! Started by the supervisor with its control socket on fd 3; argv only
//! makes it readable in `ps` (e.g. `pvx-worker-http 0.0.0.0:80
//! consumer=EXTERNAL`). One worker serves one listening endpoint and all the
//! http links (routes) on it. See docs/HTTP.md.

#![forbid(unsafe_code)]

use worker_http::event_loop;

fn main() {
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
