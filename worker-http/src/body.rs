//! Moving one message body from a source socket to a destination socket,
//! without holding it whole. Bytes the head parser already read sit at the
//! front of `buf` and go first.
//!
//! - Content-Length and read-until-close bodies: the buffered part by
//!   write(2), then `splice(2)` through a pipe (proto's relay) with the
//!   exact byte limit, so a pipelined next request is never read.
//! - Chunked bodies: read into the fixed buffer, scanned by the chunked
//!   parser to find the end, chunks written out unchanged. The trailer
//!   section is gathered in the buffer (so it must fit, as a head must),
//!   parsed whole, and what may be forwarded of it is written from a small
//!   queue of its own. What follows the end stays in `buf` for the next
//!   message.
//!
//! Backpressure: nothing is read while the buffer or pipe still holds
//! bytes the destination has not taken.

use crate::buf::{Buf, Out};
use crate::framing::{ChunkError, Chunked, Framing};
use proto::relay::{Ready, Splice};
use proto::stream::Stream;
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

/// proto's relay says which side a splice failed on; anything else
/// (pipe creation, shutdown of the destination) is the destination's.
fn splice_error(e: io::Error) -> BodyError {
    match proto::relay::SpliceError::side_of(&e) {
        Some(proto::relay::Side::Source) => BodyError::Src(e),
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
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
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

    /// Move what can be moved now; returns the bytes delivered to `dst`.
    pub fn pump(
        &mut self,
        src: &Stream,
        sr: &mut Ready,
        buf: &mut Buf,
        dst: &Stream,
        dr: &mut Ready,
    ) -> Result<u64, BodyError> {
        if self.done {
            return Ok(0);
        }
        let moved = match &mut self.mode {
            Mode::Length(rem) => {
                let mut moved = 0u64;
                // Buffered bytes first, never more than the body holds.
                while *rem > 0 && !buf.is_empty() {
                    let n = buf.write_to(dst, dr, *rem).map_err(BodyError::Dst)? as u64;
                    if n == 0 {
                        return Ok(moved);
                    }
                    *rem -= n;
                    moved += n;
                }
                if *rem > 0 {
                    let left = *rem;
                    let sp = self.splice.get_or_insert_with(|| {
                        let mut s = Splice::new();
                        s.set_limit(Some(left));
                        s
                    });
                    let m = sp
                        .pump(src.as_fd(), sr, dst.as_fd(), dr, false)
                        .map_err(splice_error)?;
                    *rem -= m.bytes;
                    moved += m.bytes;
                    if m.eof {
                        return Err(premature());
                    }
                }
                self.done = *rem == 0;
                moved
            }
            Mode::Close => {
                let mut moved = 0u64;
                while !buf.is_empty() {
                    let n = buf.write_to(dst, dr, u64::MAX).map_err(BodyError::Dst)?;
                    if n == 0 {
                        return Ok(moved);
                    }
                    moved += n as u64;
                }
                let sp = self.splice.get_or_insert_with(Splice::new);
                moved += sp
                    .pump(src.as_fd(), sr, dst.as_fd(), dr, false)
                    .map_err(splice_error)?
                    .bytes;
                self.done = sp.finished();
                moved
            }
            Mode::Chunked {
                parser,
                pending,
                trailers,
            } => {
                let (moved, done) = pump_chunked(parser, pending, trailers, src, sr, buf, dst, dr)?;
                self.done = done;
                moved
            }
        };
        Ok(moved)
    }
}

/// Chunked: write the scanned part (`pending` bytes at the front of
/// `buf`), scan more, read more, until blocked or the body ended. The
/// trailer section waits in `buf` until it is whole, then leaves, filtered,
/// through `trailers`.
#[allow(clippy::too_many_arguments)]
fn pump_chunked(
    parser: &mut Chunked,
    pending: &mut usize,
    trailers: &mut Out,
    src: &Stream,
    sr: &mut Ready,
    buf: &mut Buf,
    dst: &Stream,
    dr: &mut Ready,
) -> Result<(u64, bool), BodyError> {
    let mut moved = 0u64;
    loop {
        if *pending > 0 {
            let n = buf
                .write_to(dst, dr, *pending as u64)
                .map_err(BodyError::Dst)?;
            *pending -= n;
            moved += n as u64;
            if *pending > 0 {
                return Ok((moved, false));
            }
        }
        if !trailers.is_empty() {
            moved += trailers.flush(dst, dr).map_err(BodyError::Dst)? as u64;
            if !trailers.is_empty() {
                return Ok((moved, false));
            }
        }
        if parser.is_done() {
            return Ok((moved, true));
        }
        if parser.in_trailers() {
            let section = parser
                .trailers(buf.bytes(), trailers.buf())
                .map_err(BodyError::Framing)?;
            if let Some(n) = section {
                buf.consume(n);
                continue;
            }
            if buf.is_full() {
                return Err(BodyError::Framing(ChunkError::TrailersTooLarge));
            }
        } else if !buf.is_empty() {
            *pending = parser.feed(buf.bytes()).map_err(BodyError::Framing)?;
            continue;
        }
        if !sr.readable {
            return Ok((moved, false));
        }
        let got = buf.read_from(src, sr).map_err(BodyError::Src)?;
        if got.bytes == 0 {
            if got.eof {
                return Err(premature());
            }
            return Ok((moved, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::write_nb;
    use mio::net::UnixStream;

    const RW: Ready = Ready {
        readable: true,
        writable: true,
    };

    fn pair() -> (Stream, Stream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Stream::Unix(a), Stream::Unix(b))
    }

    /// Send `pre` as already-buffered bytes and `wire` on the socket; run the
    /// pump until done; return (delivered, bytes left in buf + socket).
    fn run(framing: Framing, pre: &[u8], wire: &[u8], close: bool) -> (Vec<u8>, Vec<u8>) {
        run_with(8, framing, pre, wire, close)
    }

    /// [`run`] with a buffer of `cap` bytes.
    fn run_with(
        cap: usize,
        framing: Framing,
        pre: &[u8],
        wire: &[u8],
        close: bool,
    ) -> (Vec<u8>, Vec<u8>) {
        let (src_w, src) = pair();
        let (dst, dst_r) = pair();
        write_nb(&src_w, &mut RW.clone(), wire).unwrap();
        if close {
            drop(src_w);
        }
        let mut buf = Buf::new(cap);
        // Pre-load the buffer the way the head parser leaves it.
        let (pw, pr) = pair();
        write_nb(&pw, &mut RW.clone(), pre).unwrap();
        buf.read_from(&pr, &mut RW.clone()).unwrap();
        let mut p = Pump::new(framing);
        let (mut sr, mut dr) = (RW, RW);
        let mut out = Vec::new();
        let mut sink = Buf::new(1 << 16);
        for _ in 0..1000 {
            p.pump(&src, &mut sr, &mut buf, &dst, &mut dr).unwrap();
            let mut r = RW;
            sink.read_from(&dst_r, &mut r).unwrap();
            out.extend_from_slice(sink.bytes());
            sink.consume(sink.len());
            sr.readable = true;
            dr.writable = true;
            if p.is_done() {
                break;
            }
        }
        assert!(p.is_done());
        let mut rest = buf.bytes().to_vec();
        let mut tail = Buf::new(1 << 16);
        let _ = tail.read_from(&src, &mut RW.clone());
        rest.extend_from_slice(tail.bytes());
        (out, rest)
    }

    #[test]
    fn length_uses_buffer_then_socket_and_stops_at_limit() {
        let (out, rest) = run(Framing::Length(10), b"0123", b"456789NEXT", false);
        assert_eq!(out, b"0123456789");
        assert_eq!(rest, b"NEXT");
        let (out, rest) = run(Framing::Length(2), b"abcd", b"", false);
        assert_eq!((out.as_slice(), rest.as_slice()), (&b"ab"[..], &b"cd"[..]));
    }

    #[test]
    fn none_moves_nothing() {
        let (out, rest) = run(Framing::None, b"GET", b"", false);
        assert!(out.is_empty());
        assert_eq!(rest, b"GET");
    }

    #[test]
    fn chunked_passes_through_and_leaves_next_message() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        let mut wire = body[3..].to_vec();
        wire.extend_from_slice(b"NEXT");
        let (out, rest) = run(Framing::Chunked, &body[..3], &wire, false);
        assert_eq!(out, body);
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn chunked_trailers_are_filtered_and_must_fit_the_buffer() {
        let wire = b"3\r\nabc\r\n0\r\nX-PV-Role: admin\r\nX-Ok: 1\r\n\r\nNEXT";
        let (out, rest) = run_with(64, Framing::Chunked, b"", wire, false);
        assert_eq!(out, b"3\r\nabc\r\n0\r\nX-Ok: 1\r\n\r\n");
        assert_eq!(rest, b"NEXT");

        // Run's buffer holds 8 bytes: a longer trailer section cannot be
        // gathered, and is refused rather than passed on unread.
        let (w, src) = pair();
        let (dst, _r) = pair();
        write_nb(&w, &mut RW.clone(), b"0\r\nX-Long: 123456\r\n\r\n").unwrap();
        let mut p = Pump::new(Framing::Chunked);
        let mut buf = Buf::new(8);
        let mut e = Ok(0);
        for _ in 0..10 {
            e = p.pump(&src, &mut RW.clone(), &mut buf, &dst, &mut RW.clone());
            if e.is_err() {
                break;
            }
        }
        assert!(
            matches!(e, Err(BodyError::Framing(ChunkError::TrailersTooLarge))),
            "{e:?}"
        );
    }

    #[test]
    fn close_runs_to_eof() {
        let (out, _) = run(Framing::Close, b"abc", b"defghijklmnop", true);
        assert_eq!(out, b"abcdefghijklmnop");
    }

    #[test]
    fn premature_eof_and_bad_chunk_are_errors() {
        let (w, src) = pair();
        let (dst, _r) = pair();
        write_nb(&w, &mut RW.clone(), b"abc").unwrap();
        drop(w);
        let mut p = Pump::new(Framing::Length(10));
        let mut buf = Buf::new(8);
        let e = p.pump(&src, &mut RW.clone(), &mut buf, &dst, &mut RW.clone());
        assert!(matches!(e, Err(BodyError::Src(_))), "{e:?}");

        let (w, src) = pair();
        write_nb(&w, &mut RW.clone(), b"zz\r\n").unwrap();
        let mut p = Pump::new(Framing::Chunked);
        let e = p.pump(&src, &mut RW.clone(), &mut buf, &dst, &mut RW.clone());
        assert!(matches!(e, Err(BodyError::Framing(_))), "{e:?}");

        let (w, src) = pair();
        write_nb(&w, &mut RW.clone(), b"5\r\nab").unwrap();
        drop(w);
        let mut p = Pump::new(Framing::Chunked);
        let mut buf = Buf::new(8);
        let e = p.pump(&src, &mut RW.clone(), &mut buf, &dst, &mut RW.clone());
        assert!(matches!(e, Err(BodyError::Src(_))), "{e:?}");
    }
}
