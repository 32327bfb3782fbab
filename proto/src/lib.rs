//! pv-xconnect's shared vocabulary: what every process speaks, the
//! supervisor and each worker alike. The worker runtime (the loop,
//! connections, dialer, relays, ...) is the `runtime` crate, which builds
//! on this one; nothing here names it, and the supervisor does not depend
//! on it (`tests/layers.rs` at the root keeps both so).
//!
//! - [`types`]: the types every crate imports (backend and listen
//!   addresses, link type, worker kind, balance policy, backend health).
//! - [`limits`]: every bound two processes agree on: a worker's limits with
//!   each flag's default, and what one control message carries.
//! - [`graph`]: the Pantavisor xconnect graph and its validation.
//! - [`plan`]: links grouped into endpoints (one worker each).
//! - [`ctl`]: supervisor <-> worker messages and their channel.
//! - [`fdpass`]: the one `SCM_RIGHTS` send and receive (control channel, unix relay).
//! - [`privs`]: the one capability drop (supervisor and workers).
//! - [`log`]: one-line events to syslog or stderr.
//! - [`text`]: escaping of outside text wherever it is printed or logged.
//! - [`stat`]: a file's type and size, 32-bit and Y2038 safe (`statx`).
//! - [`mem`], [`timer`], [`tick`]: memory trimming, deadlines, their clock.

pub mod ctl;
pub mod fdpass;
pub mod graph;
pub mod limits;
pub mod log;
pub mod mem;
pub mod plan;
pub mod privs;
pub mod stat;
pub mod text;
pub mod tick;
pub mod timer;
pub mod types;

/// Tests whose check an emulator cannot honour ask here whether they run
/// under one: `scripts/lib/qemu-runner.sh` sets `PVX_EMULATOR` (the
/// emulator and its version). Each such test says so on stderr, past the
/// test harness's capture, with the reason, and checks what it still can:
/// nothing is skipped silently (docs/DEVICE-32BIT.md, "Under emulation").
#[cfg(test)]
pub(crate) fn emulated(test: &str, why: &str) -> bool {
    use std::io::Write;
    let Ok(emulator) = std::env::var("PVX_EMULATOR") else {
        return false;
    };
    let _ = writeln!(
        std::io::stderr(),
        "NOTE {test}: under emulation ({emulator}): {why}"
    );
    true
}
