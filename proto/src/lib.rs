//! pv-xconnect's shared vocabulary and worker runtime, two layers in one
//! crate until they become two (`tests/layers.rs` keeps them apart: the
//! vocabulary names no runtime module, the supervisor only the vocabulary).
//!
//! The vocabulary, what every process speaks:
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
//!
//! The runtime, what only workers run:
//! - [`worker`]: worker start-up, the worker's control end.
//! - [`stream`] (sockets and their readiness), [`accept`], [`backend`],
//!   [`balance`], [`slab`]: the data path every worker shares.
//! - [`duplex`]: the one duplex relay (half-close and failure rules) over
//!   [`relay`] (copy, then splice once a flow is bulk, through [`pipes`])
//!   and [`fdrelay`] (bytes and fds of a unix link).
//! - [`event_loop`]: the one worker loop (listener, control messages,
//!   timers, stats, drain, health checks); [`conns`]: the tcp and unix
//!   workers' connections plugged into it.
//! - [`health`]: each checked backend's state (the table); [`prober`]:
//!   the L4 checks that fill it.
//! - [`proxy_header`]: the PROXY protocol header (tcp links, their checks).
//! - [`hold`]: connections held while their provider comes back.

pub mod accept;
pub mod backend;
pub mod balance;
pub mod conns;
pub mod ctl;
pub mod duplex;
pub mod event_loop;
pub mod fdpass;
pub mod fdrelay;
pub mod graph;
pub mod health;
pub mod hold;
pub mod limits;
pub mod log;
pub mod mem;
pub mod pipes;
pub mod plan;
pub mod privs;
pub mod prober;
pub mod proxy_header;
pub mod relay;
pub mod slab;
pub mod stat;
pub mod stream;
pub mod text;
pub mod tick;
pub mod timer;
pub mod types;
pub mod worker;

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
