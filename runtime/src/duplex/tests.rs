use super::*;
use crate::fdrelay::FdRelay;
use crate::relay::Splice;
use crate::stock::Stock;
use std::io;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

/// (peer, ours): the test plays the peer, the relay holds ours.
fn pair() -> (UnixStream, UnixStream) {
    let (peer, ours) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    (peer, ours)
}

fn ready() -> Ready {
    Ready {
        readable: true,
        writable: true,
    }
}

struct Rig<D> {
    relay: Duplex<D>,
    /// What the worker would lend the relay.
    stock: Stock,
    client_peer: UnixStream,
    client: UnixStream,
    backend: UnixStream,
    backend_peer: UnixStream,
    got: Vec<u8>,
    client_eof: bool,
}

impl<D: Direction> Rig<D> {
    fn new(relay: Duplex<D>) -> Rig<D> {
        let (client_peer, client) = pair();
        let (backend_peer, backend) = pair();
        Rig {
            relay,
            stock: Stock::default(),
            client_peer,
            client,
            backend,
            backend_peer,
            got: Vec::new(),
            client_eof: false,
        }
    }

    /// Every socket reported ready, as after an event on each.
    fn pump(&mut self) -> Pumped {
        let (mut cr, mut br) = (ready(), ready());
        self.relay.pump(
            self.client.as_fd(),
            &mut cr,
            self.backend.as_fd(),
            &mut br,
            &"backend",
            &mut self.stock,
        )
    }

    /// What the client peer can read now.
    fn client_reads(&mut self) {
        let mut buf = [0u8; 65536];
        loop {
            match self.client_peer.read(&mut buf) {
                Ok(0) => {
                    self.client_eof = true;
                    return;
                }
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => return,
            }
        }
    }
}

/// The backend peer writes as much as its socket takes, then closes
/// with our upload unread: our reads get the data, then ECONNRESET;
/// our writes get EPIPE.
fn backend_answers_and_resets<D: Direction>(rig: &mut Rig<D>) -> Vec<u8> {
    let mut answer = Vec::new();
    let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    while let Ok(n) = rig.backend_peer.write(&block) {
        answer.extend_from_slice(&block[..n]);
    }
    let peer = std::mem::replace(&mut rig.backend_peer, pair().0);
    drop(peer);
    answer
}

fn reset_keeps_the_other_direction<D: Direction>(relay: Duplex<D>) {
    let mut rig = Rig::new(relay);
    rig.client_peer
        .write_all(b"upload the backend never reads")
        .unwrap();
    rig.pump();
    let answer = backend_answers_and_resets(&mut rig);
    assert!(answer.len() > 64 * 1024, "more than one pipe's worth");
    // The client keeps uploading and reads only later.
    rig.client_peer.write_all(b"more upload").unwrap();
    for _ in 0..10_000 {
        rig.pump();
        rig.client_reads();
        if rig.client_eof {
            break;
        }
    }
    assert!(rig.client_eof, "the client gets EOF after the answer");
    assert_eq!(rig.got.len(), answer.len());
    assert!(rig.got == answer, "the answer arrives intact");
    // Upload after the backend died is read and dropped, not counted.
    rig.client_peer.write_all(b"still uploading").unwrap();
    assert_eq!(rig.pump().up, 0);
    rig.client_peer.shutdown(std::net::Shutdown::Write).unwrap();
    rig.pump();
    assert!(rig.relay.done(), "{:?}", rig.relay.flows());
    // Its end is the backend's: a reset read, or a write it refused.
    let f = rig.relay.fault().expect("the backend's failure is kept");
    assert!(f.backend, "{f:?}");
    assert!(matches!(f.cause, Cause::Reset | Cause::BrokenPipe), "{f:?}");
}

#[test]
fn splice_reset_from_backend_still_delivers_its_answer() {
    reset_keeps_the_other_direction(Duplex::<Splice>::default());
}

#[test]
fn fd_relay_reset_from_backend_still_delivers_its_answer() {
    reset_keeps_the_other_direction(Duplex::new(FdRelay::new(true), FdRelay::new(true)));
}

#[test]
fn half_close_passes_on_and_both_ends_close_the_connection() {
    let mut rig = Rig::new(Duplex::<Splice>::default());
    rig.client_peer.write_all(b"question").unwrap();
    rig.client_peer.shutdown(std::net::Shutdown::Write).unwrap();
    let p = rig.pump();
    assert_eq!((p.up, p.changed), (8, true));
    assert_eq!(rig.relay.flows(), (Flow::Ended, Flow::Open));
    assert!(rig.relay.lingering());
    let mut q = Vec::new();
    rig.backend_peer.set_nonblocking(false).unwrap();
    rig.backend_peer.read_to_end(&mut q).unwrap();
    assert_eq!(q, b"question", "then EOF");
    // The other direction is still open: the answer comes after.
    rig.backend_peer.write_all(b"answer").unwrap();
    rig.backend_peer
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    assert_eq!(rig.pump().down, 6);
    assert!(rig.relay.done());
    // The last end closes the connection: its close is the client's
    // FIN (no shutdown call first).
    rig.client = pair().1;
    rig.client_reads();
    assert_eq!((rig.got.as_slice(), rig.client_eof), (&b"answer"[..], true));
    assert_eq!(rig.relay.fault(), None, "both ends closed normally");
}

#[test]
fn a_client_gone_mid_answer_ends_the_answer_only() {
    let mut rig = Rig::new(Duplex::<Splice>::default());
    // The backend still has a request to read when the client vanishes.
    rig.client_peer.write_all(b"request").unwrap();
    rig.backend_peer.write_all(b"partial answer").unwrap();
    let client_peer = std::mem::replace(&mut rig.client_peer, pair().0);
    drop(client_peer); // unread answer: our writes to it fail
    rig.pump();
    rig.pump();
    // What the client sent before it went is still delivered, then EOF.
    let mut q = Vec::new();
    rig.backend_peer.set_nonblocking(false).unwrap();
    rig.backend_peer.read_to_end(&mut q).unwrap();
    assert_eq!(q, b"request");
    assert_eq!(rig.relay.flows(), (Flow::Ended, Flow::Draining));
    // The backend keeps its stream open; the request was taken, the
    // client is gone: nothing is at stake any more, the drain stops.
    rig.backend_peer.write_all(b" and the rest").unwrap();
    let p = rig.pump();
    assert!(p.changed && rig.relay.done(), "{:?}", rig.relay.flows());
    let f = rig.relay.fault().expect("the client's failure is kept");
    assert!(!f.backend, "{f:?}");
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `n` bytes each way at once, both peers half-closing when done;
/// returns (what the backend got, what the client got, a pipe was
/// seen in either direction).
fn both_ways(n: usize) -> (Vec<u8>, Vec<u8>, bool) {
    let (up, down) = (pattern(n, 1), pattern(n, 2));
    let mut rig = Rig::new(Duplex::<Splice>::default());
    let (mut us, mut ds) = (0, 0);
    let (mut got_up, mut backend_eof) = (Vec::new(), false);
    let mut pipes = false;
    let mut buf = vec![0u8; 65536];
    for _ in 0..100_000 {
        if us < n {
            if let Ok(k) = rig.client_peer.write(&up[us..]) {
                us += k;
                if us == n {
                    rig.client_peer.shutdown(std::net::Shutdown::Write).unwrap();
                }
            }
        }
        if ds < n {
            if let Ok(k) = rig.backend_peer.write(&down[ds..]) {
                ds += k;
                if ds == n {
                    rig.backend_peer
                        .shutdown(std::net::Shutdown::Write)
                        .unwrap();
                }
            }
        }
        rig.pump();
        pipes |= rig.relay.up.pipe_fd().is_some() || rig.relay.down.pipe_fd().is_some();
        while let Ok(k) = rig.backend_peer.read(&mut buf) {
            if k == 0 {
                backend_eof = true;
                break;
            }
            got_up.extend_from_slice(&buf[..k]);
        }
        rig.client_reads();
        if rig.relay.done() {
            break;
        }
    }
    assert!(rig.relay.done(), "{:?}", rig.relay.flows());
    // The connection is closed once done: the last FIN is the close.
    rig.client = pair().1;
    rig.backend = pair().1;
    rig.client_reads();
    while let Ok(k) = rig.backend_peer.read(&mut buf) {
        if k == 0 {
            backend_eof = true;
            break;
        }
        got_up.extend_from_slice(&buf[..k]);
    }
    assert!(backend_eof && rig.client_eof, "both peers see the end");
    assert_eq!(rig.stock.pipes.in_use(), 0, "no pipe held after the end");
    (got_up, std::mem::take(&mut rig.got), pipes)
}

#[test]
fn a_flow_under_the_threshold_never_makes_a_pipe() {
    let n = crate::relay::SPLICE_AFTER as usize - 1;
    let (up, down, pipes) = both_ways(n);
    assert!(
        up == pattern(n, 1) && down == pattern(n, 2),
        "intact, in order"
    );
    assert!(!pipes, "copied through the buffer only");
}

#[test]
fn a_bulk_flow_switches_to_splice_both_ways_and_arrives_intact() {
    let n = 3 << 20;
    let (up, down, pipes) = both_ways(n);
    assert_eq!((up.len(), down.len()), (n, n));
    assert!(
        up == pattern(n, 1) && down == pattern(n, 2),
        "intact, in order"
    );
    assert!(pipes, "spliced once past the threshold");
}

#[test]
fn a_direction_splices_only_past_the_threshold() {
    let mut rig = Rig::new(Duplex::<Splice>::default());
    let block = pattern(crate::relay::SPLICE_AFTER as usize, 3);
    rig.client_peer.write_all(&block).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < block.len() {
        rig.pump();
        while let Ok(k) = rig.backend_peer.read(&mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
    }
    assert!(!rig.relay.up.is_splicing() && rig.relay.up.pipe_fd().is_none());
    rig.client_peer.write_all(b"one more").unwrap();
    rig.pump();
    assert!(rig.relay.up.is_splicing(), "past the threshold");
    rig.client_peer.write_all(b" and more").unwrap();
    rig.pump();
    assert!(rig.relay.up.pipe_fd().is_some(), "reads go through a pipe");
    while let Ok(k) = rig.backend_peer.read(&mut buf) {
        got.extend_from_slice(&buf[..k]);
    }
    assert_eq!(&got[block.len()..], b"one more and more");
}

/// Counts the reads of the direction it wraps.
#[derive(Default)]
struct Counted(Splice, usize);

impl Direction for Counted {
    fn can_read(&self) -> bool {
        self.0.can_read()
    }
    fn read(&mut self, src: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        self.1 += 1;
        self.0.read(src, stock)
    }
    fn read_was_short(&self) -> bool {
        self.0.read_was_short()
    }
    fn held(&self) -> usize {
        self.0.held()
    }
    fn write(&mut self, dst: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        self.0.write(dst, stock)
    }
    fn write_last(&mut self, dst: BorrowedFd<'_>, stock: &mut Stock) -> io::Result<usize> {
        self.0.write_last(dst, stock)
    }
    fn discard(&mut self, stock: &mut Stock) {
        self.0.discard(stock)
    }
}

#[test]
fn a_trusted_short_read_ends_the_reading_without_eagain() {
    for trust in [false, true] {
        let mut rig = Rig::new(Duplex::<Counted>::default());
        let s = if trust {
            ShortRead::Empty
        } else {
            ShortRead::Unknown
        };
        rig.relay.short_reads(s, s);
        rig.client_peer.write_all(b"request").unwrap();
        let (mut cr, mut br) = (ready(), ready());
        let p = rig.relay.pump(
            rig.client.as_fd(),
            &mut cr,
            rig.backend.as_fd(),
            &mut br,
            &"backend",
            &mut rig.stock,
        );
        assert_eq!(p.up, 7);
        assert!(!cr.readable, "nothing more to read, either way");
        let reads = rig.relay.up.1;
        assert_eq!(reads, if trust { 1 } else { 2 }, "trust {trust}");
    }
}

#[test]
fn a_short_read_from_a_hung_up_source_is_its_last() {
    // The peer's FIN was reported: the read that would return 0 is
    // skipped, the bytes go out as the last, and the destination is shut.
    let mut rig = Rig::new(Duplex::<Counted>::default());
    rig.relay.short_reads(ShortRead::End, ShortRead::Unknown);
    rig.client_peer.write_all(b"request").unwrap();
    rig.client_peer.shutdown(std::net::Shutdown::Write).unwrap();
    let p = rig.pump();
    assert_eq!((p.up, p.changed), (7, true));
    assert_eq!(rig.relay.up.1, 1, "one read: no read of the EOF");
    assert_eq!(rig.relay.flows(), (Flow::Ended, Flow::Open));
    let mut q = Vec::new();
    rig.backend_peer.set_nonblocking(false).unwrap();
    rig.backend_peer.read_to_end(&mut q).unwrap();
    assert_eq!(q, b"request", "then EOF");
}
