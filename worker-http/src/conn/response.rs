//! Response heads from the backend: parsed as they come, interim ones
//! (`1xx`) relayed to a client that can take them, the final one (or a
//! `101`) deciding how the response is framed and whether the client
//! connection stays open after it. What the client gets is queued in its
//! output (`cout`), ended by `head::end_response`.

use super::exchange::{Exchange, Resp};
use super::record::Cause;
use super::{BackendConn, Fail};
use crate::body::Pump;
use crate::buf::{Out, Spares};
use crate::framing::Framing;
use crate::head::{self, Parsed, Persist, Response};

/// Interim (1xx) heads queued for the client, in bytes, past which no
/// further head is parsed and the backend is not read until the client
/// took them: the queue holds at most this plus one head (which is at most
/// `max_head_bytes` as read, and about as much as written), however many
/// interim responses a backend sends. No count is capped, as HAProxy caps
/// none: the response timeout, which interim heads do not reset, ends a
/// backend that never sends its final head. 4 KiB: several Early Hints,
/// or a 100 Continue and the final head, still leave in one write.
const INTERIM_QUEUE: usize = 4096;

/// Read and parse response heads until the final one (or a 101) is in,
/// or [`INTERIM_QUEUE`] bytes of interim heads wait for the client.
pub(super) fn read_response_head(
    ex: &mut Exchange,
    b: &mut BackendConn,
    cout: &mut Out,
    closing: bool,
    spares: &mut Spares,
) -> Result<bool, Fail> {
    let mut progress = false;
    while matches!(ex.resp, Resp::Head) {
        // Back-pressure: heads for a client that is not taking them wait
        // in the backend's socket, not here (a provider may stream 1xx
        // heads without end: one queue's worth is all they cost).
        if cout.pending() >= INTERIM_QUEUE {
            break;
        }
        if !ex.bbuf.is_empty() {
            // Heads already sent go; the allocation stays for the next.
            cout.compact();
            let mark = cout.buf().len();
            match head::parse_response(ex.bbuf.bytes(), ex.is_head, cout.buf()) {
                Err(why) => {
                    return Err(Fail::Status(
                        502,
                        Cause::BadResponse,
                        format!("{why} from {}", ex.route.backend),
                    ))
                }
                Ok(Parsed::Complete(resp)) => {
                    ex.bbuf.consume(resp.len);
                    match ex.on_head(&resp, closing)? {
                        Some(persist) => {
                            ex.rec.status = Some(resp.status);
                            head::end_response(resp.status, persist, cout.buf())
                        }
                        // Not for this client: take back what parse_response wrote.
                        None => cout.buf().truncate(mark),
                    }
                    progress = true;
                    continue;
                }
                Ok(Parsed::Partial) if ex.bbuf.is_full() => {
                    return Err(Fail::Status(
                        502,
                        Cause::BadResponse,
                        format!("response head from {} too large", ex.route.backend),
                    ))
                }
                Ok(Parsed::Partial) => {}
            }
        }
        if !b.ready.readable {
            break;
        }
        let got = ex
            .bbuf
            .read_head(&b.stream, &mut b.ready, b.hup, spares)
            .map_err(|e| {
                Fail::Backend(format!("reading response from {}: {e}", ex.route.backend))
            })?;
        if got.bytes > 0 {
            ex.resp_bytes = true;
            progress = true;
            continue;
        }
        if got.eof {
            return Err(Fail::Backend(format!(
                "{} closed the connection without a response",
                ex.route.backend
            )));
        }
        break;
    }
    Ok(progress)
}

impl Exchange {
    /// A response head arrived (interim or final); its start is already
    /// queued for the client. Returns how to end it, or None to drop it.
    fn on_head(&mut self, resp: &Response, closing: bool) -> Result<Option<Persist>, Fail> {
        if resp.status == 101 {
            if !self.upgrade {
                return Err(Fail::Status(
                    502,
                    Cause::BadResponse,
                    format!(
                        "101 from {} to a request that did not ask to upgrade",
                        self.route.backend
                    ),
                ));
            }
            self.sent_to_client = true;
            self.tunnel = true;
            self.resp = Resp::Done;
            return Ok(Some(Persist::KeepAlive11));
        }
        if resp.status < 200 {
            // 100 Continue, 103 Early Hints: an HTTP/1.0 client cannot take them.
            if self.client_minor == 1 {
                self.sent_to_client = true;
                return Ok(Some(Persist::KeepAlive11));
            }
            return Ok(None);
        }
        self.reusable = resp.reusable;
        // The client connection outlives a backend that closes; it cannot
        // outlive a close-delimited body or an unfinished request body.
        let keep = self.client_keep
            && !closing
            && resp.framing != Framing::Close
            && self.request_sent()
            && !self.req_broken;
        self.persist = match (keep, self.client_minor) {
            (false, _) => Persist::Close,
            (true, 0) => Persist::KeepAlive10,
            (true, _) => Persist::KeepAlive11,
        };
        self.sent_to_client = true;
        self.resp = Resp::Body(Pump::new(resp.framing));
        Ok(Some(self.persist))
    }
}
