use super::*;
use crate::buf::write_nb;
use mio::net::UnixStream;

const RW: Ready = Ready {
    readable: true,
    writable: true,
};

/// What a worker lends a pump, owned by the test: spare buffers and a
/// stock.
#[derive(Default)]
struct Owned(Spares, Stock);

impl Owned {
    fn lent(&mut self) -> Lent<'_> {
        Lent {
            spares: &mut self.0,
            stock: &mut self.1,
        }
    }
}

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
    let mut sp = Owned::default();
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
    buf.read_from(&pr, &mut RW.clone(), &mut sp.0).unwrap();
    let mut p = Pump::new(framing);
    let (mut sr, mut dr) = (RW, RW);
    let mut out = Vec::new();
    let mut sink = Buf::new(1 << 16);
    for _ in 0..1000 {
        p.pump(&src, &mut sr, &mut buf, &dst, &mut dr, &mut sp.lent())
            .unwrap();
        let mut r = RW;
        sink.read_from(&dst_r, &mut r, &mut sp.0).unwrap();
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
    let _ = tail.read_from(&src, &mut RW.clone(), &mut sp.0);
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
    let mut sp = Owned::default();
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
    buf.read_from(&pr, &mut RW.clone(), &mut sp.0).unwrap();
    let mut p = Pump::new(framing);
    assert_eq!(p.buffered(&buf).unwrap(), 8);
    assert!(!p.ends_after(8));
    let wire = [7u8; 100_000];
    let mut sent = write_nb(&src_w, &mut RW.clone(), &wire).unwrap();
    let (mut sr, mut dr) = (RW, RW);
    let mut moved = 0u64;
    let mut sink = Buf::new(1 << 16);
    for _ in 0..1000 {
        moved += p
            .pump(&src, &mut sr, &mut buf, &dst, &mut dr, &mut sp.lent())
            .unwrap();
        let mut r = RW;
        while sink
            .read_from(&dst_r, &mut r, &mut sp.0)
            .is_ok_and(|g| g.bytes > 0)
        {
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
        e = pump_ready(&mut p, &src, &mut buf, &dst);
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
    let mut sp = Owned::default();
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
        let moved = p
            .pump(&src, &mut sr, &mut buf, &dst, &mut dr, &mut sp.lent())
            .unwrap();
        spliced |= p.splice.is_some();
        sink.read_from(&dst_r, &mut RW.clone(), &mut sp.0).unwrap();
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
    while sink
        .read_from(&dst_r, &mut RW.clone(), &mut sp.0)
        .unwrap()
        .bytes
        > 0
    {
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
    let _ = tail.read_from(&src, &mut RW.clone(), &mut sp.0);
    rest.extend_from_slice(tail.bytes());
    assert_eq!(rest, b"NEXT");
}

#[test]
fn close_runs_to_eof() {
    let (out, _) = run(Framing::Close, b"abc", b"defghijklmnop", true);
    assert_eq!(out, b"abcdefghijklmnop");
}

/// One pass of `p` from `src` to `dst`, both sides ready.
fn pump_ready(p: &mut Pump, src: &Stream, buf: &mut Buf, dst: &Stream) -> Result<u64, BodyError> {
    let mut sp = Owned::default();
    p.pump(
        src,
        &mut RW.clone(),
        buf,
        dst,
        &mut RW.clone(),
        &mut sp.lent(),
    )
}

#[test]
fn premature_eof_and_bad_chunk_are_errors() {
    let (w, src) = pair();
    let (dst, _r) = pair();
    write_nb(&w, &mut RW.clone(), b"abc").unwrap();
    drop(w);
    let mut p = Pump::new(Framing::Length(10));
    let mut buf = Buf::new(8);
    let e = pump_ready(&mut p, &src, &mut buf, &dst);
    assert!(matches!(e, Err(BodyError::Src(_))), "{e:?}");
    // What came before the early end was delivered, and counts.
    assert_eq!(p.delivered(), 3);

    let (w, src) = pair();
    write_nb(&w, &mut RW.clone(), b"zz\r\n").unwrap();
    let mut p = Pump::new(Framing::Chunked);
    let e = pump_ready(&mut p, &src, &mut buf, &dst);
    assert!(matches!(e, Err(BodyError::Framing(_))), "{e:?}");

    let (w, src) = pair();
    write_nb(&w, &mut RW.clone(), b"5\r\nab").unwrap();
    drop(w);
    let mut p = Pump::new(Framing::Chunked);
    let mut buf = Buf::new(8);
    let e = pump_ready(&mut p, &src, &mut buf, &dst);
    assert!(matches!(e, Err(BodyError::Src(_))), "{e:?}");
    // The size line and the data before the end, as forwarded.
    assert_eq!(p.delivered(), 5);
}
