//! pvx-worker-tcp: serves one tcp endpoint of pv-xconnect. Started by the
//! supervisor only (fd 3 = control socket); the argv is just for `ps`:
//! `pvx-worker-tcp 0.0.0.0:8080 consumer=EXTERNAL`.

mod conn;
mod event_loop;
mod proxy_header;
mod sni;

fn main() {
    let started = match proto::worker::start("tcp") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    proto::info!(
        "serving {} with {} route(s)",
        started.config.endpoint.key,
        started.config.endpoint.routes.len()
    );
    let worker = match event_loop::Worker::new(started) {
        Ok(w) => w,
        Err(e) => {
            proto::error!("cannot start event loop: {e}");
            std::process::exit(1);
        }
    };
    proto::mem::trim_code();
    if let Err(e) = worker.run() {
        proto::error!("{e}");
        std::process::exit(1);
    }
}
