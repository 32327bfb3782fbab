//! Reaching a request's backend: a non-blocking connect, the short retry
//! while a provider restarts (connect refused, socket not there yet), and
//! the connect timeout (in `Conn::deadline`). A pooled connection skips all
//! of this (see `Conn::start_exchange`).

use crate::conn::{BackendConn, Conn, Ctx, Fail, Phase};
use crate::keys::{self, Owner};
use mio::Interest;
use proto::graph::Backend;
use proto::relay::Ready;
use std::os::fd::AsRawFd;
use std::time::Instant;

impl Conn {
    /// Connect (again) to the exchange's backend; `since` is when the
    /// first attempt started, for the connect timeout.
    pub(crate) fn start_connect(
        &mut self,
        cx: &mut Ctx,
        attempt: u32,
        since: Instant,
    ) -> Result<(), Fail> {
        let Some(addr) = self.ex.as_ref().map(|e| e.route.backend.clone()) else {
            return Err(Fail::Abort("connect without a request".into()));
        };
        self.backend = None;
        match proto::backend::connect(&addr) {
            Ok(mut s) => {
                let fd = s.as_raw_fd();
                cx.owners.set(fd, Owner::Conn(cx.slot));
                cx.registry
                    .register(
                        &mut s,
                        keys::backend(fd),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| Fail::Status(502, format!("registering backend socket: {e}")))?;
                self.backend = Some(BackendConn {
                    stream: s,
                    ready: Ready::default(),
                    hup: false,
                });
                self.phase = Phase::Connecting {
                    since,
                    attempt,
                    retry_at: None,
                };
                Ok(())
            }
            Err(e) => self.retry_later(cx, attempt, since, &addr, e),
        }
    }

    /// A refused connect while a provider restarts is retried, a few
    /// hundred milliseconds in all (SPEC §5); anything else is a 502.
    fn retry_later(
        &mut self,
        cx: &Ctx,
        attempt: u32,
        since: Instant,
        addr: &Backend,
        e: std::io::Error,
    ) -> Result<(), Fail> {
        self.backend = None;
        if proto::backend::is_retryable(&e) {
            if let Some(d) = proto::backend::retry_delay(attempt + 1, cx.limits.connect_retry_ms) {
                self.phase = Phase::Connecting {
                    since,
                    attempt: attempt + 1,
                    retry_at: Some(cx.now + d),
                };
                return Ok(());
            }
        }
        Err(Fail::Status(502, format!("connect to {addr}: {e}")))
    }

    pub(crate) fn connecting(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let Phase::Connecting {
            since,
            attempt,
            retry_at,
        } = self.phase
        else {
            return Ok(false);
        };
        if let Some(at) = retry_at {
            if cx.now < at {
                return Ok(false);
            }
            self.start_connect(cx, attempt, since)?;
            return Ok(true);
        }
        let Some(b) = self.backend.as_mut() else {
            return Err(Fail::Abort("connecting without a socket".into()));
        };
        if !b.ready.writable && !b.ready.readable {
            return Ok(false);
        }
        match b.stream.connect_done() {
            Ok(true) => {
                self.phase = Phase::Exchange;
                Ok(true)
            }
            Ok(false) => {
                b.ready = Ready::default();
                Ok(false)
            }
            Err(e) => {
                let addr = self.ex.as_ref().map(|x| x.route.backend.clone());
                match addr {
                    Some(a) => self.retry_later(cx, attempt, since, &a, e)?,
                    None => return Err(Fail::Abort(format!("connect: {e}"))),
                }
                Ok(true)
            }
        }
    }
}
