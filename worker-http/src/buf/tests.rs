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
    let mut sp = Spares::default();
    let (a, b) = pair();
    let mut r = RW;
    write_nb(&a, &mut r, b"hello world").unwrap();
    let mut buf = Buf::new(5);
    let mut ready = RW;
    assert_eq!(buf.read_from(&b, &mut ready, &mut sp).unwrap().bytes, 5);
    assert!(ready.readable, "full, not drained: readable stays set");
    assert_eq!(buf.bytes(), b"hello");
    buf.consume(3);
    assert_eq!(buf.read_from(&b, &mut ready, &mut sp).unwrap().bytes, 3);
    assert_eq!(buf.bytes(), b"lo wo");
    buf.consume(5);
    assert_eq!(buf.read_from(&b, &mut ready, &mut sp).unwrap().bytes, 3);
    assert_eq!(buf.read_from(&b, &mut ready, &mut sp).unwrap().bytes, 0);
    assert!(!ready.readable);
    buf.consume(3);
    buf.release(&mut sp);
    assert_eq!(buf.data.capacity(), 0);
    drop(a);
    ready.readable = true;
    assert!(buf.read_from(&b, &mut ready, &mut sp).unwrap().eof);
}

#[test]
fn settle_keeps_only_what_is_worth_keeping() {
    let mut sp = Spares::default();
    let (a, b) = pair();
    let mut r = RW;
    let mut buf = Buf::new(64);
    // Nothing read: no memory.
    buf.settle(&mut sp);
    assert_eq!(buf.held(), 0);
    // A few bytes: a right-sized copy, the full buffer goes back.
    write_nb(&a, &mut r, b"GET / HT").unwrap();
    buf.read_head(&b, &mut RW.clone(), false, &mut sp).unwrap();
    assert_eq!(buf.held(), 64, "a read works in a full-size buffer");
    buf.settle(&mut sp);
    assert_eq!(buf.held(), 8);
    assert_eq!(buf.bytes(), b"GET / HT");
    // The next read continues after them, in a full buffer again.
    write_nb(&a, &mut r, b"TP/1.1\r\n").unwrap();
    buf.read_head(&b, &mut RW.clone(), false, &mut sp).unwrap();
    assert_eq!(buf.bytes(), b"GET / HTTP/1.1\r\n");
    assert_eq!(buf.held(), 64);
    buf.consume(4);
    buf.settle(&mut sp);
    assert_eq!(buf.bytes(), b"/ HTTP/1.1\r\n");
    assert_eq!(buf.held(), 12);
    // Over half the buffer in use: kept as it is.
    write_nb(&a, &mut r, &[b'x'; 40]).unwrap();
    buf.read_from(&b, &mut RW.clone(), &mut sp).unwrap();
    assert_eq!(buf.len(), 52);
    buf.settle(&mut sp);
    assert_eq!(buf.held(), 64);
    // Emptied: given back.
    let n = buf.len();
    buf.consume(n);
    buf.settle(&mut sp);
    assert_eq!(buf.held(), 0);
}

/// A queue appended to again and again (interim heads) keeps only
/// what is not sent yet, in the same allocation.
#[test]
fn compact_drops_what_was_sent() {
    let (a, b) = pair();
    let mut out = Out::default();
    out.buf()
        .extend_from_slice(b"HTTP/1.1 103 Early Hints\r\n\r\n");
    assert_eq!(out.flush(&a, &mut RW.clone()).unwrap(), 28);
    out.buf().extend_from_slice(b"next");
    assert_eq!(out.pending(), 4);
    out.compact();
    assert_eq!((out.pending(), out.data.as_slice()), (4, &b"next"[..]));
    assert!(out.data.capacity() >= 32, "the allocation stays");
    out.compact();
    assert_eq!(out.data, b"next");
    drop(b);
}

#[test]
fn no_buffer_is_taken_when_nothing_can_be_read() {
    let mut sp = Spares::default();
    let (_a, b) = pair();
    let mut buf = Buf::new(64);
    let mut ready = Ready {
        readable: false,
        writable: true,
    };
    assert_eq!(
        buf.read_from(&b, &mut ready, &mut sp).unwrap(),
        Got::default()
    );
    assert_eq!(buf.held(), 0);
    // Readable but nothing there: the buffer used goes back on settle.
    let mut ready = RW;
    assert_eq!(
        buf.read_head(&b, &mut ready, false, &mut sp).unwrap().bytes,
        0
    );
    assert!(!ready.readable);
    buf.settle(&mut sp);
    assert_eq!(buf.held(), 0);
}

#[test]
fn short_read_counts_as_drained_unless_hup() {
    let mut sp = Spares::default();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (&a).write_all(b"abc").unwrap();
    // Wait for the bytes without reading them.
    let mut peek = [0u8; 3];
    while b.peek(&mut peek).unwrap() < 3 {}
    b.set_nonblocking(true).unwrap();
    let b = Stream::Tcp(mio::net::TcpStream::from_std(b));
    let mut buf = Buf::new(16);
    let mut ready = RW;
    assert_eq!(
        buf.read_head(&b, &mut ready, false, &mut sp).unwrap().bytes,
        3
    );
    assert!(!ready.readable, "short read on TCP: drained");
    drop(a);
    let mut ready = RW;
    let got = buf.read_head(&b, &mut ready, true, &mut sp).unwrap();
    assert!(got.eof, "after a hup the EOF is read, not assumed away");
}

#[test]
fn write_to_respects_max() {
    let mut sp = Spares::default();
    let (a, b) = pair();
    let mut buf = Buf::new(16);
    let mut r = RW;
    write_nb(&a, &mut r, b"abcdef").unwrap();
    buf.read_from(&b, &mut r, &mut sp).unwrap();
    let mut w = RW;
    assert_eq!(buf.write_to(&b, &mut w, 4).unwrap(), 4);
    assert_eq!(buf.bytes(), b"ef");
    let mut got = Buf::new(16);
    got.read_from(&a, &mut RW.clone(), &mut sp).unwrap();
    assert_eq!(got.bytes(), b"abcd");
}

#[test]
fn out_replays_after_rewind() {
    let mut sp = Spares::default();
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
    got.read_from(&b, &mut RW.clone(), &mut sp).unwrap();
    assert_eq!(got.bytes(), b"headhead");
}

/// What a connection gives back is what the next read takes: no buffer
/// allocated and zeroed per request (the list is the handler's, `Spares`).
#[test]
fn a_buffer_given_back_is_lent_again() {
    let mut sp = Spares::default();
    let (a, b) = pair();
    let mut one = Buf::new(64);
    write_nb(&a, &mut RW.clone(), b"x").unwrap();
    one.read_from(&b, &mut RW.clone(), &mut sp).unwrap();
    let lent = one.data.as_ptr();
    one.give_back(&mut sp);
    assert_eq!((one.held(), one.len()), (0, 0));
    let mut two = Buf::new(64);
    write_nb(&a, &mut RW.clone(), b"y").unwrap();
    two.read_from(&b, &mut RW.clone(), &mut sp).unwrap();
    assert_eq!(two.data.as_ptr(), lent);
    assert_eq!(two.bytes(), b"y");
    two.give_back(&mut sp);
    sp.trim(0);
    assert!(sp.0.is_empty());
}
