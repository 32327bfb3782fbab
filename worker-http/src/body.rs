//! Moving one message body from a source socket to a destination socket,
//! without holding it whole. Bytes the head parser already read sit at the
//! front of `buf` and go first.
//!
//! - Content-Length and read-until-close bodies: the buffered part by
//!   write(2), then `splice(2)` through a pipe (runtime's relay) with the
//!   exact byte limit, so a pipelined next request is never read.
//! - Chunked bodies: read into the fixed buffer, scanned by the chunked
//!   parser to find the end, chunks written out unchanged; the rest of a
//!   long chunk's data (16 KiB or more still to come) by `splice` with
//!   that exact length as the limit, so size lines, CRLFs and trailers are
//!   all still read and checked by the parser. The trailer
//!   section is gathered in the buffer (so it must fit, as a head must),
//!   parsed whole, and what may be forwarded of it is written from a small
//!   queue of its own. What follows the end stays in `buf` for the next
//!   message.
//!
//! Backpressure: nothing is read while the buffer or pipe still holds
//! bytes the destination has not taken.

use crate::buf::{Buf, Out, Spares};
use crate::framing::{ChunkError, Chunked, Framing};
use runtime::relay::Splice;
use runtime::stock::Stock;
use runtime::stream::Ready;
use runtime::stream::Stream;
use std::fmt;
use std::io;
use std::os::fd::AsFd;

/// Which side failed, because the caller reacts differently.
#[derive(Debug)]
pub enum BodyError {
    /// Reading the source failed, or it ended before the body did.
    Src(io::Error),
    /// Writing the destination failed.
    Dst(io::Error),
    /// The chunked framing is invalid.
    Framing(ChunkError),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Src(e) => write!(f, "reading body: {e}"),
            BodyError::Dst(e) => write!(f, "writing body: {e}"),
            BodyError::Framing(e) => write!(f, "chunked body: {e}"),
        }
    }
}

/// runtime's relay says which side a splice failed on; anything else
/// (pipe creation, shutdown of the destination) is the destination's.
fn splice_error(e: io::Error) -> BodyError {
    match runtime::relay::SpliceError::side_of(&e) {
        Some(runtime::duplex::Side::Source) => BodyError::Src(e),
        _ => BodyError::Dst(e),
    }
}

fn premature() -> BodyError {
    BodyError::Src(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "closed before the end of the body",
    ))
}

#[derive(Debug)]
enum Mode {
    Length(u64),
    Chunked {
        parser: Chunked,
        /// Chunk bytes at the front of the buffer, scanned, not yet written.
        pending: usize,
        /// The trailer section to forward, once parsed.
        trailers: Out,
    },
    Close,
}

#[derive(Debug)]
pub struct Pump {
    mode: Mode,
    splice: Option<Splice>,
    done: bool,
    /// Body bytes delivered so far, with those a call moved before it
    /// failed (a client that hangs up mid-body: what it sent before that
    /// was delivered, and counts).
    delivered: u64,
}

impl Pump {
    pub fn new(f: Framing) -> Pump {
        let (mode, done) = match f {
            Framing::None => (Mode::Length(0), true),
            Framing::Length(n) => (Mode::Length(n), n == 0),
            Framing::Chunked => (
                Mode::Chunked {
                    parser: Chunked::new(),
                    pending: 0,
                    trailers: Out::default(),
                },
                false,
            ),
            Framing::Close => (Mode::Close, false),
        };
        Pump {
            mode,
            splice: None,
            done,
            delivered: 0,
        }
    }

    /// Body bytes delivered to the destination so far ([`Pump::advance`]d
    /// and pumped), including those of a call that returned an error.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether delivering `n` more bytes ends the body (a Content-Length
    /// or a chunked body whose end is already parsed; never a body that
    /// ends at the backend's close).
    pub fn ends_after(&self, n: usize) -> bool {
        match &self.mode {
            Mode::Length(rem) => *rem == n as u64,
            Mode::Close => false,
            Mode::Chunked {
                parser, pending, ..
            } => *pending == n && parser.is_done(),
        }
    }

    /// Bytes still inside the pipe: not on the source, not yet delivered.
    pub fn in_flight(&self) -> bool {
        self.splice.as_ref().is_some_and(|s| !s.is_idle())
    }

    /// How many bytes at the front of `buf` are body bytes that may be
    /// written right now (so a head and the start of its body can leave in
    /// one `writev`). Scans chunked bytes as needed.
    pub fn buffered(&mut self, buf: &Buf) -> Result<usize, BodyError> {
        if self.done || self.splice.is_some() {
            return Ok(0);
        }
        Ok(match &mut self.mode {
            Mode::Length(rem) => (*rem).min(buf.len() as u64) as usize,
            Mode::Close => buf.len(),
            Mode::Chunked {
                parser, pending, ..
            } => {
                if *pending == 0 && !parser.is_done() && !buf.is_empty() {
                    *pending = parser.feed(buf.bytes()).map_err(BodyError::Framing)?;
                }
                *pending
            }
        })
    }

    /// `n` of the bytes [`Pump::buffered`] offered were written (and
    /// consumed from the buffer by the caller).
    pub fn advance(&mut self, n: usize) {
        self.delivered += n as u64;
        match &mut self.mode {
            Mode::Length(rem) => {
                *rem -= n as u64;
                self.done = *rem == 0;
            }
            Mode::Close => {}
            Mode::Chunked {
                parser, pending, ..
            } => {
                *pending -= n;
                self.done = *pending == 0 && parser.is_done();
            }
        }
    }

    /// Move what can be moved now; returns the bytes delivered to `dst`
    /// (those moved before an error are in [`Pump::delivered`]).
    /// `lent`: where a chunked body's read takes its buffer, and the pipes
    /// of a splice.
    pub fn pump(
        &mut self,
        src: &Stream,
        sr: &mut Ready,
        buf: &mut Buf,
        dst: &Stream,
        dr: &mut Ready,
        lent: &mut Lent,
    ) -> Result<u64, BodyError> {
        if self.done {
            return Ok(0);
        }
        // What is delivered is added to `delivered` as it goes, so an
        // error leaves it counted.
        let before = self.delivered;
        match &mut self.mode {
            Mode::Length(rem) => {
                // Buffered bytes first, never more than the body holds.
                while *rem > 0 && !buf.is_empty() {
                    let n = buf.write_to(dst, dr, *rem).map_err(BodyError::Dst)? as u64;
                    if n == 0 {
                        return Ok(self.delivered - before);
                    }
                    *rem -= n;
                    self.delivered += n;
                }
                if *rem > 0 {
                    let left = *rem;
                    let sp = self.splice.get_or_insert_with(|| {
                        let mut s = Splice::new();
                        s.set_limit(Some(left));
                        // Known to be bulk: no copy phase first.
                        if left > runtime::relay::SPLICE_AFTER {
                            s.splice_now();
                        }
                        s
                    });
                    let m = sp
                        .pump(src.as_fd(), sr, dst.as_fd(), dr, false, lent.stock)
                        .map_err(splice_error)?;
                    *rem -= m.bytes;
                    self.delivered += m.bytes;
                    if m.eof {
                        return Err(premature());
                    }
                }
                self.done = *rem == 0;
            }
            Mode::Close => {
                while !buf.is_empty() {
                    let n = buf.write_to(dst, dr, u64::MAX).map_err(BodyError::Dst)?;
                    if n == 0 {
                        return Ok(self.delivered - before);
                    }
                    self.delivered += n as u64;
                }
                let sp = self.splice.get_or_insert_with(Splice::new);
                self.delivered += sp
                    .pump(src.as_fd(), sr, dst.as_fd(), dr, false, lent.stock)
                    .map_err(splice_error)?
                    .bytes;
                self.done = sp.finished();
            }
            Mode::Chunked {
                parser,
                pending,
                trailers,
            } => {
                let mut c = ChunkedPump {
                    parser,
                    pending,
                    trailers,
                    splice: &mut self.splice,
                    delivered: &mut self.delivered,
                };
                self.done = c.pump(src, sr, buf, dst, dr, lent)?;
            }
        }
        Ok(self.delivered - before)
    }
}

/// The rest of a chunk's data goes by `splice` when at least this much of
/// it is still on the socket (more than one read into the buffer takes);
/// shorter data, and every size line, CRLF and trailer, through the buffer.
const SPLICE_FROM: u64 = 16 * 1024;

/// What a body's pump borrows from its worker for one call: the handler's
/// spare buffers (a chunked body's reads) and the loop's stock (the pipes
/// of a splice).
pub struct Lent<'a> {
    pub spares: &'a mut Spares,
    pub stock: &'a mut Stock,
}

/// A chunked body's state, borrowed from its [`Pump`] for one `pump`.
struct ChunkedPump<'a> {
    parser: &'a mut Chunked,
    /// Chunk bytes at the front of the buffer, scanned, not yet written.
    pending: &'a mut usize,
    trailers: &'a mut Out,
    /// The payload of long chunks: its limit is the chunk's data left, so
    /// it never reads a size line or the next message.
    splice: &'a mut Option<Splice>,
    /// The pump's count of bytes delivered, added to as they go.
    delivered: &'a mut u64,
}

impl ChunkedPump<'_> {
    /// Write what the pipe holds and the scanned part (`pending` bytes at
    /// the front of `buf`), scan more, read or splice more, until blocked
    /// or the body ended. The trailer section waits in `buf` until it is
    /// whole, then leaves, filtered, through `trailers`. The pipe is empty
    /// whenever the buffer is read into, so bytes leave in order. What it
    /// delivers is added to `delivered`; returns whether the body ended.
    fn pump(
        &mut self,
        src: &Stream,
        sr: &mut Ready,
        buf: &mut Buf,
        dst: &Stream,
        dr: &mut Ready,
        lent: &mut Lent,
    ) -> Result<bool, BodyError> {
        loop {
            if let Some(sp) = self.splice.as_mut().filter(|s| !s.finished()) {
                let m = sp
                    .pump(src.as_fd(), sr, dst.as_fd(), dr, false, lent.stock)
                    .map_err(splice_error)?;
                *self.delivered += m.bytes;
                if m.eof {
                    return Err(premature());
                }
                if !sp.finished() {
                    return Ok(false);
                }
            }
            if *self.pending > 0 {
                let n = buf
                    .write_to(dst, dr, *self.pending as u64)
                    .map_err(BodyError::Dst)?;
                *self.pending -= n;
                *self.delivered += n as u64;
                if *self.pending > 0 {
                    return Ok(false);
                }
            }
            if !self.trailers.is_empty() {
                *self.delivered += self.trailers.flush(dst, dr).map_err(BodyError::Dst)? as u64;
                if !self.trailers.is_empty() {
                    return Ok(false);
                }
            }
            if self.parser.is_done() {
                return Ok(true);
            }
            if self.parser.in_trailers() {
                let section = self
                    .parser
                    .trailers(buf.bytes(), self.trailers.buf())
                    .map_err(BodyError::Framing)?;
                if let Some(n) = section {
                    buf.consume(n);
                    continue;
                }
                if buf.is_full() {
                    return Err(BodyError::Framing(ChunkError::TrailersTooLarge));
                }
            } else if !buf.is_empty() {
                *self.pending = self.parser.feed(buf.bytes()).map_err(BodyError::Framing)?;
                continue;
            } else if self.parser.data_left() >= SPLICE_FROM {
                // The buffer is empty: the data left of this chunk is next
                // on the socket, exactly that many bytes.
                let left = self.parser.data_left();
                self.parser.skip_data(left);
                let sp = self.splice.get_or_insert_with(Splice::new);
                sp.set_limit(Some(left));
                if left > runtime::relay::SPLICE_AFTER {
                    sp.splice_now();
                }
                continue;
            }
            if !sr.readable {
                return Ok(false);
            }
            let got = buf
                .read_from(src, sr, lent.spares)
                .map_err(BodyError::Src)?;
            if got.bytes == 0 {
                if got.eof {
                    return Err(premature());
                }
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests;
