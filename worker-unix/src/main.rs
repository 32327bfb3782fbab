//! pvx-worker-unix: serves one unix link of pv-xconnect: a socket planted
//! in the consumer's mount namespace, relayed (bytes and `SCM_RIGHTS` fds)
//! to the provider's socket. Started by the supervisor only (fd 3 =
//! control socket); the argv is just for `ps`:
//! `pvx-worker-unix /run/app/display.sock consumer=app`.

mod conn;
mod event_loop;
mod relay;

fn main() {
    let started = match proto::worker::start("unix") {
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
    if let Err(e) = worker.run() {
        proto::error!("{e}");
        std::process::exit(1);
    }
}
