//! The Exchange phase's step: both directions at once. The request head
//! and body go out while the response heads and body come back: a backend
//! may answer before it has read the whole request (then the client
//! connection closes after the answer, as nothing says where the unread
//! body ends). A body leaves by `body.rs`'s `Pump`; response heads are
//! read in `response.rs`.

use super::exchange::Resp;
use super::record::Cause;
use super::response::read_response_head;
use super::{Conn, Ctx, Fail, Phase};
use crate::body::BodyError;
use crate::head::Persist;

/// Why a response body stopped: which side failed.
fn response_cause(e: &BodyError) -> Cause {
    match e {
        BodyError::Src(_) => Cause::BackendClosed,
        BodyError::Dst(_) => Cause::ClientGone,
        BodyError::Framing(_) => Cause::BadResponse,
    }
}

impl Conn {
    /// One pass of the Exchange phase: request head and body out, then
    /// response heads and body back, as far as the sockets allow.
    pub(super) fn transfer(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let Phase::Exchange { ex, backend: b } = &mut self.phase else {
            return Ok(false);
        };
        let mut progress = false;
        if !ex.head.is_empty() {
            // The head and the body bytes already read leave together.
            let extra = ex
                .req
                .buffered(&self.cbuf)
                .map_err(|e| Fail::Status(400, Cause::BadBody, format!("request {e}")))?;
            let (h, n) = ex
                .head
                .flush_with(&b.stream, &mut b.ready, &mut self.cbuf, extra, false)
                .map_err(|e| {
                    Fail::Backend(format!("sending request to {}: {e}", ex.route.backend))
                })?;
            ex.req.advance(n);
            if n > 0 {
                ex.replayable = false;
            }
            cx.stats.bytes_in += (h + n) as u64;
            // The head was counted as the client sent it.
            ex.rec.bytes_in += n as u64;
            progress |= h + n > 0;
        }
        if ex.head.is_empty() && !ex.req.is_done() && !ex.req_broken {
            // Counted whatever the call ends with: a client that hangs up
            // mid-body sent what was delivered before.
            let before = ex.req.delivered();
            let r = ex.req.pump(
                &self.client,
                &mut self.cr,
                &mut self.cbuf,
                &b.stream,
                &mut b.ready,
                &mut cx.lent(),
            );
            let n = ex.req.delivered() - before;
            cx.stats.bytes_in += n;
            ex.rec.bytes_in += n;
            progress |= n > 0;
            match r {
                Ok(_) => {}
                Err(BodyError::Dst(e)) => {
                    // Perhaps the backend answered early and closed: read on.
                    proto::debug!("{} stopped taking the request body: {e}", ex.route.backend);
                    ex.req_broken = true;
                    progress = true;
                }
                Err(e @ BodyError::Src(_)) => {
                    return Err(Fail::Abort(Cause::ClientGone, format!("request {e}")))
                }
                Err(e @ BodyError::Framing(_)) => {
                    return Err(Fail::Status(400, Cause::BadBody, format!("request {e}")))
                }
            }
        }
        if ex.sent_at.is_none() && ex.request_sent() {
            ex.sent_at = Some(cx.now);
        }
        // Interim heads are relayed like a body: on while the client takes
        // them as fast as they come, and the backend is left unread while
        // the client is slow (`read_response_head` stops at INTERIM_QUEUE).
        loop {
            progress |= read_response_head(
                ex,
                b,
                &mut self.cout,
                self.closing || cx.draining,
                cx.spares,
            )?;
            if ex.resp_bytes {
                ex.rec.waited(ex.sent_at, cx.now, true);
            }
            let queued = !self.cout.is_empty();
            if queued {
                // The response head and the body bytes already read leave together.
                let (extra, pump) = match &mut ex.resp {
                    Resp::Body(p) => (
                        p.buffered(&ex.bbuf).map_err(|e| {
                            let why = format!("response from {}: {e}", ex.route.backend);
                            Fail::Abort(Cause::BadResponse, why)
                        })?,
                        Some(p),
                    ),
                    _ => (0, None),
                };
                // The whole rest of a response after which we close: our FIN
                // may ride on it (`finish` shuts or closes in this same pass).
                let last = ex.persist == Persist::Close
                    && !ex.tunnel
                    && pump
                        .as_ref()
                        .is_some_and(|p| !p.is_done() && p.ends_after(extra));
                let (h, n) = self
                    .cout
                    .flush_with(&self.client, &mut self.cr, &mut ex.bbuf, extra, last)
                    .map_err(|e| {
                        Fail::Abort(Cause::ClientGone, format!("writing response: {e}"))
                    })?;
                if let Some(p) = pump {
                    p.advance(n);
                }
                cx.stats.bytes_out += (h + n) as u64;
                ex.rec.bytes_out += (h + n) as u64;
                progress |= h + n > 0;
            }
            if !(queued && self.cout.is_empty() && matches!(ex.resp, Resp::Head)) {
                break;
            }
        }
        if self.cout.is_empty() {
            if let Resp::Body(p) = &mut ex.resp {
                let before = p.delivered();
                let r = p.pump(
                    &b.stream,
                    &mut b.ready,
                    &mut ex.bbuf,
                    &self.client,
                    &mut self.cr,
                    &mut cx.lent(),
                );
                let n = p.delivered() - before;
                cx.stats.bytes_out += n;
                ex.rec.bytes_out += n;
                progress |= n > 0;
                r.map_err(|e| {
                    let why = format!("response from {}: {e}", ex.route.backend);
                    Fail::Abort(response_cause(&e), why)
                })?;
                if p.is_done() {
                    ex.resp = Resp::Done;
                    progress = true;
                }
            }
        }
        if progress {
            ex.last_active = cx.now;
        }
        if self.cout.is_empty() {
            if ex.tunnel {
                self.start_tunnel(cx);
                return Ok(true);
            }
            if matches!(ex.resp, Resp::Done) {
                self.finish(cx);
                return Ok(true);
            }
        }
        Ok(progress)
    }
}
