//! The ReadHead phase: wait for a request head (the first on a new
//! connection, the next on a kept-alive one), read it, and hand it to an
//! exchange (`exchange.rs`), or close when nothing more will come.

use super::record::Cause;
use super::{Conn, Ctx, Fail, Phase};
use crate::head::{self, Parsed};

impl Conn {
    pub(super) fn read_head(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let Phase::ReadHead {
            head_since, first, ..
        } = &mut self.phase
        else {
            return Ok(false);
        };
        let first = *first;
        if !self.cbuf.is_empty() {
            let since = *head_since.get_or_insert(cx.now);
            match head::parse_request(self.cbuf.bytes()) {
                Err(r) => {
                    let cause = match r.status {
                        431 => Cause::HeadTooLarge,
                        _ => Cause::BadRequest,
                    };
                    return Err(Fail::Status(r.status, cause, r.why.to_string()));
                }
                Ok(Parsed::Complete(req)) => {
                    self.start_exchange(cx, req, since)?;
                    return Ok(true);
                }
                Ok(Parsed::Partial) if self.cbuf.is_full() => {
                    return Err(Fail::Status(
                        431,
                        Cause::HeadTooLarge,
                        format!("request head over {} bytes", cx.limits.max_head_bytes),
                    ))
                }
                Ok(Parsed::Partial) => {}
            }
        } else if self.wants_close(cx) && !(first && self.cr.readable) {
            // Between requests: nothing is lost by closing now. (A client
            // taken from the backlog while draining is read once first.)
            self.phase = Phase::Done;
            return Ok(false);
        }
        if !self.cr.readable {
            return Ok(false);
        }
        let got = self
            .cbuf
            .read_head(&self.client, &mut self.cr, self.c_hup, cx.spares)
            .map_err(|e| Fail::Abort(Cause::ClientGone, format!("reading request head: {e}")))?;
        if got.bytes > 0 {
            return Ok(true);
        }
        if got.eof {
            if !self.cbuf.is_empty() {
                return Err(Fail::Abort(
                    Cause::ClientGone,
                    "client closed in the middle of a request head".into(),
                ));
            }
            self.phase = Phase::Done;
        } else if self.cbuf.is_empty() && self.wants_close(cx) {
            self.phase = Phase::Done;
        }
        Ok(false)
    }

    /// Back to waiting for the next request on a kept-alive connection.
    pub(super) fn next_request(&mut self, cx: &mut Ctx) {
        self.phase = Phase::ReadHead {
            since: cx.now,
            head_since: None,
            first: false,
        };
        self.cbuf.release(cx.spares);
        self.cout.clear();
    }
}
