//! pv-xconnect: the one executable (BEHAVIOUR §2). Busybox style, it is the
//! supervisor under any name but a worker's; the supervisor execs it again
//! as `pvx-worker-tcp|http|unix` for each worker (supervisor/src/spawn.rs),
//! so `ps`, `pidof` and `strace` see the worker names. Only this file knows
//! both the supervisor and the workers; they know `proto` alone.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&arg0).file_name().unwrap_or(OsStr::new(""));
    match name.to_str() {
        Some("pvx-worker-tcp") => worker_tcp::main(),
        Some("pvx-worker-http") => worker_http::main(),
        Some("pvx-worker-unix") => worker_unix::main(),
        _ => supervisor::entry::main(),
    }
}
