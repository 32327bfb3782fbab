//! Control messages (`proto::ctl`): a datagram's bytes plus the number of
//! fds it arrived with. Input: first byte = fd count, the rest = the
//! datagram.
//!
//! Invariants: no panic; a message is accepted only with exactly the fd
//! count its type carries, and reads back equal after being written again;
//! through a real SEQPACKET pair (`send_raw`/`recv`) the outcome is the
//! pure decode's, and every fd that arrived is closed whatever the outcome
//! (the fd table is the same size after each message as before).

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::ctl::{self, CtlError, Frame, FromWorker, Message, ToWorker};
use proto::limits::{MAX_FDS, MAX_MSG};
use std::fmt::Debug;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::OnceLock;

/// The most fds sent through the real socket: the kernel's SCM_MAX_FD,
/// which is also what the receive has room for (proto::fdpass).
const SOCKET_FDS: usize = MAX_FDS;

/// The pure decode of one datagram. true: the socket path must accept it
/// too. A blob header is never accepted here: the fds this target sends
/// are /dev/null, never the sealed memfd a blob needs.
fn roundtrip<M: Message + PartialEq + Debug>(body: &[u8], fds: usize) -> bool {
    match ctl::decode_frame::<M>(body, fds) {
        Ok(Frame::Message(m)) => {
            assert_eq!(m.fd_count(), fds);
            let again = serde_json::to_vec(&m).expect("a decoded message serializes");
            let back = ctl::decode::<M>(&again, fds).expect("a written message reads back");
            assert_eq!(back, m);
            true
        }
        Ok(Frame::Blob { len }) => {
            assert!(fds >= 1 && len <= M::MAX_BODY);
            false
        }
        Err(CtlError::FdCount { expected, got }) => {
            assert_ne!(expected, got);
            assert_eq!(got, fds);
            false
        }
        Err(CtlError::Bad(_))
        | Err(CtlError::Blob(_))
        | Err(CtlError::TooLarge(_))
        | Err(CtlError::TooManyFds) => false,
        Err(e) => panic!("decode gave a transport error: {e}"),
    }
}

struct Pair {
    a: OwnedFd,
    b: OwnedFd,
    null: OwnedFd,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let (a, b) = ctl::socketpair().expect("socketpair");
        let null = std::fs::File::open("/dev/null").expect("/dev/null").into();
        Pair { a, b, null }
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, body)) = data.split_first() else {
        return;
    };
    let fds = n as usize;
    let to_worker = roundtrip::<ToWorker>(body, fds);
    roundtrip::<FromWorker>(body, fds);

    if fds > SOCKET_FDS || body.len() > MAX_MSG || (body.is_empty() && fds == 0) {
        return;
    }
    let p = pair();
    let before = open_fds();
    let raw = vec![p.null.as_raw_fd(); fds];
    ctl::send_raw(p.a.as_fd(), body, &raw).expect("send on an empty socketpair");
    let got = ctl::recv::<ToWorker>(p.b.as_fd());
    assert_eq!(
        got.is_ok(),
        to_worker,
        "socket and pure decode disagree: {got:?}"
    );
    if let Ok((_, received)) = &got {
        assert_eq!(received.len(), fds);
    }
    drop(got);
    assert_eq!(open_fds(), before, "fds leaked by a received message");
});
