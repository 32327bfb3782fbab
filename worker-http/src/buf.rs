//! Fixed-capacity byte buffers for heads and chunked bodies, and the
//! non-blocking read/write loops edge-triggered readiness needs (run until
//! `WouldBlock`, then clear the flag).
//!
//! Memory is allocated on first use and given back by [`Buf::release`], so
//! an idle keep-alive connection holds no buffer.

use proto::relay::Ready;
use proto::stream::Stream;
use std::io::{self, ErrorKind, Read, Write};

#[derive(Debug)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    cap: usize,
}

/// What one `read_from` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    pub bytes: usize,
    pub eof: bool,
}

impl Buf {
    pub fn new(cap: usize) -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
            end: 0,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Give the memory back when nothing is buffered.
    pub fn release(&mut self) {
        if self.is_empty() && self.data.capacity() > 0 {
            self.data = Vec::new();
        }
    }

    /// Read until the source would block, reaches EOF, or the buffer is
    /// full (then `ready.readable` stays set: there may be more).
    pub fn read_from(&mut self, src: &Stream, ready: &mut Ready) -> io::Result<Got> {
        let mut got = Got::default();
        if self.data.len() < self.cap {
            self.data.resize(self.cap, 0);
        }
        loop {
            if self.end == self.cap && self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.cap || !ready.readable {
                return Ok(got);
            }
            match (&*src).read(&mut self.data[self.end..]) {
                Ok(0) => {
                    got.eof = true;
                    return Ok(got);
                }
                Ok(n) => {
                    self.end += n;
                    got.bytes += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    ready.readable = false;
                    return Ok(got);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Write up to `max` buffered bytes to `dst`; returns how many went.
    pub fn write_to(&mut self, dst: &Stream, ready: &mut Ready, max: u64) -> io::Result<usize> {
        let want = (self.len() as u64).min(max) as usize;
        let n = write_nb(dst, ready, &self.data[self.start..self.start + want])?;
        self.consume(n);
        Ok(n)
    }
}

/// Write as much of `data` as the socket takes now.
pub fn write_nb(dst: &Stream, ready: &mut Ready, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() && ready.writable {
        match (&*dst).write(&data[done..]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "socket took 0 bytes")),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => ready.writable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Bytes queued for one socket (a rewritten head, a canned response).
#[derive(Debug, Default)]
pub struct Out {
    data: Vec<u8>,
    pos: usize,
}

impl Out {
    pub fn is_empty(&self) -> bool {
        self.pos == self.data.len()
    }

    /// Append bytes to send.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    /// Forget what was queued (used when a request is replayed from the
    /// start after a stale pooled backend).
    pub fn rewind(&mut self) {
        self.pos = 0;
    }

    pub fn clear(&mut self) {
        self.data = Vec::new();
        self.pos = 0;
    }

    /// Send what the socket takes; memory is kept until `clear`, so a
    /// request head can still be replayed.
    pub fn flush(&mut self, dst: &Stream, ready: &mut Ready) -> io::Result<usize> {
        let n = write_nb(dst, ready, &self.data[self.pos..])?;
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::UnixStream;

    fn pair() -> (Stream, Stream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Stream::Unix(a), Stream::Unix(b))
    }

    const RW: Ready = Ready {
        readable: true,
        writable: true,
    };

    #[test]
    fn reads_until_would_block_and_stops_when_full() {
        let (a, b) = pair();
        let mut r = RW;
        write_nb(&a, &mut r, b"hello world").unwrap();
        let mut buf = Buf::new(5);
        let mut ready = RW;
        assert_eq!(buf.read_from(&b, &mut ready).unwrap().bytes, 5);
        assert!(ready.readable, "full, not drained: readable stays set");
        assert_eq!(buf.bytes(), b"hello");
        buf.consume(3);
        assert_eq!(buf.read_from(&b, &mut ready).unwrap().bytes, 3);
        assert_eq!(buf.bytes(), b"lo wo");
        buf.consume(5);
        assert_eq!(buf.read_from(&b, &mut ready).unwrap().bytes, 3);
        assert_eq!(buf.read_from(&b, &mut ready).unwrap().bytes, 0);
        assert!(!ready.readable);
        buf.consume(3);
        buf.release();
        assert_eq!(buf.data.capacity(), 0);
        drop(a);
        ready.readable = true;
        assert!(buf.read_from(&b, &mut ready).unwrap().eof);
    }

    #[test]
    fn write_to_respects_max() {
        let (a, b) = pair();
        let mut buf = Buf::new(16);
        let mut r = RW;
        write_nb(&a, &mut r, b"abcdef").unwrap();
        buf.read_from(&b, &mut r).unwrap();
        let mut w = RW;
        assert_eq!(buf.write_to(&b, &mut w, 4).unwrap(), 4);
        assert_eq!(buf.bytes(), b"ef");
        let mut got = Buf::new(16);
        got.read_from(&a, &mut RW.clone()).unwrap();
        assert_eq!(got.bytes(), b"abcd");
    }

    #[test]
    fn out_replays_after_rewind() {
        let (a, b) = pair();
        let mut o = Out::default();
        o.buf().extend_from_slice(b"head");
        let mut w = RW;
        assert_eq!(o.flush(&a, &mut w).unwrap(), 4);
        assert!(o.is_empty());
        o.rewind();
        assert!(!o.is_empty());
        o.flush(&a, &mut w).unwrap();
        let mut got = Buf::new(16);
        got.read_from(&b, &mut RW.clone()).unwrap();
        assert_eq!(got.bytes(), b"headhead");
    }
}
