//! Moving one message body from a source socket to a destination socket,
//! without holding it whole. Bytes the head parser already read sit at the
//! front of `buf` and go first.
//!
//! - Content-Length and read-until-close bodies: the buffered part by
//!   write(2), then `splice(2)` through a pipe (proto's relay) with the
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

use crate::buf::{Buf, Out};
use crate::framing::{ChunkError, Chunked, Framing};
use runtime::relay::Splice;
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

/// proto's relay says which side a splice failed on; anything else
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
                        // Known to be bulk: no copy phase first.
                        if left > runtime::relay::SPLICE_AFTER {
                            s.splice_now();
                        }
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
                let mut c = ChunkedPump {
                    parser,
                    pending,
                    trailers,
                    splice: &mut self.splice,
                };
                let (moved, done) = c.pump(src, sr, buf, dst, dr)?;
                self.done = done;
                moved
            }
        };
        Ok(moved)
    }
}

/// The rest of a chunk's data goes by `splice` when at least this much of
/// it is still on the socket (more than one read into the buffer takes);
/// shorter data, and every size line, CRLF and trailer, through the buffer.
const SPLICE_FROM: u64 = 16 * 1024;

/// A chunked body's state, borrowed from its [`Pump`] for one `pump`.
struct ChunkedPump<'a> {
    parser: &'a mut Chunked,
    /// Chunk bytes at the front of the buffer, scanned, not yet written.
    pending: &'a mut usize,
    trailers: &'a mut Out,
    /// The payload of long chunks: its limit is the chunk's data left, so
    /// it never reads a size line or the next message.
    splice: &'a mut Option<Splice>,
}

impl ChunkedPump<'_> {
    /// Write what the pipe holds and the scanned part (`pending` bytes at
    /// the front of `buf`), scan more, read or splice more, until blocked
    /// or the body ended. The trailer section waits in `buf` until it is
    /// whole, then leaves, filtered, through `trailers`. The pipe is empty
    /// whenever the buffer is read into, so bytes leave in order.
    fn pump(
        &mut self,
        src: &Stream,
        sr: &mut Ready,
        buf: &mut Buf,
        dst: &Stream,
        dr: &mut Ready,
    ) -> Result<(u64, bool), BodyError> {
        let mut moved = 0u64;
        loop {
            if let Some(sp) = self.splice.as_mut().filter(|s| !s.finished()) {
                let m = sp
                    .pump(src.as_fd(), sr, dst.as_fd(), dr, false)
                    .map_err(splice_error)?;
                moved += m.bytes;
                if m.eof {
                    return Err(premature());
                }
                if !sp.finished() {
                    return Ok((moved, false));
                }
            }
            if *self.pending > 0 {
                let n = buf
                    .write_to(dst, dr, *self.pending as u64)
                    .map_err(BodyError::Dst)?;
                *self.pending -= n;
                moved += n as u64;
                if *self.pending > 0 {
                    return Ok((moved, false));
                }
            }
            if !self.trailers.is_empty() {
                moved += self.trailers.flush(dst, dr).map_err(BodyError::Dst)? as u64;
                if !self.trailers.is_empty() {
                    return Ok((moved, false));
                }
            }
            if self.parser.is_done() {
                return Ok((moved, true));
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

    /// A body past 4 GiB (a firmware image) is counted in u64 on every
    /// target: 5,000,000,000 would be 705,032,704 in a 32-bit usize, and
    /// the pump would end the body there and read the rest as the next
    /// request. Framed from a real head, part buffered, part spliced.
    #[test]
    fn a_body_past_4_gib_counts_down_in_u64() {
        const LEN: u64 = 5_000_000_000;
        let head = b"PUT /fw HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000000\r\n\r\n";
        let framing = match crate::head::parse_request(head) {
            Ok(crate::head::Parsed::Complete(r)) => r.framing,
            other => panic!("head not parsed: {other:?}"),
        };
        assert_eq!(framing, Framing::Length(LEN));
        let (src_w, src) = pair();
        let (dst, dst_r) = pair();
        let mut buf = Buf::new(8);
        let (pw, pr) = pair();
        write_nb(&pw, &mut RW.clone(), b"01234567").unwrap();
        buf.read_from(&pr, &mut RW.clone()).unwrap();
        let mut p = Pump::new(framing);
        assert_eq!(p.buffered(&buf).unwrap(), 8);
        assert!(!p.ends_after(8));
        let wire = [7u8; 100_000];
        let mut sent = write_nb(&src_w, &mut RW.clone(), &wire).unwrap();
        let (mut sr, mut dr) = (RW, RW);
        let mut moved = 0u64;
        let mut sink = Buf::new(1 << 16);
        for _ in 0..1000 {
            moved += p.pump(&src, &mut sr, &mut buf, &dst, &mut dr).unwrap();
            let mut r = RW;
            while sink.read_from(&dst_r, &mut r).is_ok_and(|g| g.bytes > 0) {
                sink.consume(sink.len());
            }
            if sent < wire.len() {
                sent += write_nb(&src_w, &mut RW.clone(), &wire[sent..]).unwrap();
            }
            sr.readable = true;
            dr.writable = true;
            if moved == 8 + wire.len() as u64 {
                break;
            }
        }
        assert_eq!(moved, 8 + wire.len() as u64);
        assert!(!p.is_done(), "4,999,899,992 bytes still to come");
        assert!(matches!(p.mode, Mode::Length(rem) if rem == LEN - moved));
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

    /// Long chunks' data goes by splice with the chunk's exact length as
    /// the limit; sizes, CRLFs and trailers are still read and checked in
    /// the buffer, and what follows the body stays on the socket.
    #[test]
    fn long_chunk_data_is_spliced_and_framing_still_parsed() {
        let mut wire = Vec::new();
        for (i, len) in [300_000usize, 5, 70_000, 16_384, 16_385]
            .into_iter()
            .enumerate()
        {
            wire.extend_from_slice(format!("{len:x}\r\n").as_bytes());
            wire.extend(std::iter::repeat_n(b'a' + i as u8, len));
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\nX-PV-Role: admin\r\nX-Ok: 1\r\n\r\n");
        let body_len = wire.len();
        wire.extend_from_slice(b"NEXT");
        let (w, src) = pair();
        let (dst, dst_r) = pair();
        let feeder = {
            let wire = wire.clone();
            std::thread::spawn(move || {
                let mut at = 0;
                while at < wire.len() {
                    let n = write_nb(&w, &mut RW.clone(), &wire[at..]).unwrap();
                    if n == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    at += n;
                }
                w
            })
        };
        let mut buf = Buf::new(16 * 1024);
        let mut p = Pump::new(Framing::Chunked);
        let mut out = Vec::new();
        let mut sink = Buf::new(1 << 16);
        let mut spliced = false;
        // Until done, not a number of turns: on a loaded machine the
        // feeder may not run for many turns. The bound only turns a stuck
        // pump into a failure instead of a hang.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !p.is_done() && std::time::Instant::now() < give_up {
            let (mut sr, mut dr) = (RW, RW);
            let moved = p.pump(&src, &mut sr, &mut buf, &dst, &mut dr).unwrap();
            spliced |= p.splice.is_some();
            sink.read_from(&dst_r, &mut RW.clone()).unwrap();
            out.extend_from_slice(sink.bytes());
            sink.consume(sink.len());
            if moved == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        // Before the join: a failed pump drops `src`, and the feeder's
        // next write fails instead of waiting for a reader for ever.
        assert!(p.is_done(), "the body did not end");
        let _w = feeder.join().unwrap();
        while sink.read_from(&dst_r, &mut RW.clone()).unwrap().bytes > 0 {
            out.extend_from_slice(sink.bytes());
            sink.consume(sink.len());
        }
        assert!(spliced, "the long chunks went through the buffer");
        let mut want = wire[..body_len].to_vec();
        let t = b"X-PV-Role: admin\r\n";
        let at = want.windows(t.len()).position(|x| x == t).unwrap();
        want.drain(at..at + t.len());
        assert!(
            out == want,
            "body altered ({} bytes, want {})",
            out.len(),
            want.len()
        );
        let mut rest = buf.bytes().to_vec();
        let mut tail = Buf::new(64);
        let _ = tail.read_from(&src, &mut RW.clone());
        rest.extend_from_slice(tail.bytes());
        assert_eq!(rest, b"NEXT");
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
