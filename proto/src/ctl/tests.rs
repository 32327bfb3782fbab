//! The control channel end to end over a real socketpair, its blobs, and
//! the codec's refusals.

use super::blob::BLOB_SEALS;
use super::*;
use crate::limits::{Limits, MAX_BLOB, MAX_MSG};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// A worker and a supervisor of different ages still understand each
/// other: the hold and health fields default to "off" and to 0.
#[test]
fn hold_and_health_fields_default_when_absent() {
    let mut v = serde_json::to_value(Limits::default()).unwrap();
    for k in [
        "hold_timeout_ms",
        "max_held",
        "health_interval_ms",
        "health_timeout_ms",
        "health_fall",
        "health_rise",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    let l: Limits = serde_json::from_value(v).unwrap();
    assert_eq!((l.hold_timeout_ms, l.health_interval_ms), (0, 0));
    assert_eq!((l.max_held, l.health_fall, l.health_rise), (1024, 2, 1));
    let old =
        r#"{"msg":"stats","stats":{"active":1,"total":2,"bytes_in":3,"bytes_out":4,"errors":0}}"#;
    match serde_json::from_str::<FromWorker>(old).unwrap() {
        FromWorker::Stats { stats, health, .. } => {
            assert_eq!((stats.total, stats.held, stats.held_total), (2, 0, 0));
            assert!(health.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Without checks, a report carries no health field at all.
    let msg = FromWorker::Stats {
        stats: Stats::default(),
        health: Vec::new(),
        routes: Vec::new(),
    };
    assert!(!serde_json::to_string(&msg).unwrap().contains("health"));
}
use std::os::fd::AsFd;

#[test]
fn roundtrip_with_fd() {
    let (a, b) = socketpair().unwrap();
    let (p, _q) = nix::unistd::pipe().unwrap();
    let cfg = WorkerConfig {
        endpoint: crate::plan::from_graph(
            r#"[{"type":"tcp","name":"a","consumer":"E","target":"127.0.0.1:9","socket":"127.0.0.1:1"}]"#,
        )
        .unwrap()
        .endpoints
        .remove(0),
        limits: Limits::default(),
        log_target: "stderr".into(),
        log_level: "info".into(),
        access_log: Default::default(),
    };
    let m = ToWorker::Init {
        seq: 1,
        config: cfg,
    };
    send(a.as_fd(), &m, &[p.as_raw_fd()]).unwrap();
    let (got, fds): (ToWorker, _) = recv(b.as_fd()).unwrap();
    assert_eq!(got, m);
    assert_eq!(fds.len(), 1);
}

#[test]
fn wrong_fd_count_and_garbage_are_errors_not_panics() {
    let (a, b) = socketpair().unwrap();
    send(
        a.as_fd(),
        &ToWorker::Drain {
            seq: 1,
            deadline_ms: 5,
        },
        &[],
    )
    .unwrap();
    let (p, _q) = nix::unistd::pipe().unwrap();
    // Drain must carry no fd.
    send_raw(
        a.as_fd(),
        br#"{"msg":"drain","seq":2,"deadline_ms":1}"#,
        &[p.as_raw_fd()],
    )
    .unwrap();
    send_raw(a.as_fd(), b"\x00\xffnot json", &[]).unwrap();
    send_raw(a.as_fd(), br#"{"msg":"init","seq":3}"#, &[]).unwrap();
    assert!(recv::<ToWorker>(b.as_fd()).is_ok());
    assert!(matches!(
        recv::<ToWorker>(b.as_fd()),
        Err(CtlError::FdCount {
            expected: 0,
            got: 1
        })
    ));
    assert!(matches!(recv::<ToWorker>(b.as_fd()), Err(CtlError::Bad(_))));
    assert!(matches!(recv::<ToWorker>(b.as_fd()), Err(CtlError::Bad(_))));
    assert!(matches!(
        recv::<ToWorker>(b.as_fd()),
        Err(CtlError::WouldBlock)
    ));
    assert!(matches!(
        send_raw(a.as_fd(), &vec![b'x'; MAX_MSG + 1], &[]),
        Err(CtlError::TooLarge(_))
    ));
    drop(a);
    assert!(matches!(recv::<ToWorker>(b.as_fd()), Err(CtlError::Eof)));
}

#[test]
fn decode_checks_the_fd_count_without_a_socket() {
    let drain = br#"{"msg":"drain","seq":2,"deadline_ms":1}"#;
    assert!(matches!(
        decode::<ToWorker>(drain, 0),
        Ok(ToWorker::Drain { seq: 2, .. })
    ));
    assert!(matches!(
        decode::<ToWorker>(drain, 1),
        Err(CtlError::FdCount {
            expected: 0,
            got: 1
        })
    ));
    assert!(matches!(
        decode::<FromWorker>(b"\xff", 0),
        Err(CtlError::Bad(_))
    ));
}

#[test]
fn too_many_fds_are_closed() {
    let (a, b) = socketpair().unwrap();
    let pipes: Vec<_> = (0..3).map(|_| nix::unistd::pipe().unwrap()).collect();
    let raw: Vec<RawFd> = pipes
        .iter()
        .flat_map(|(r, w)| [r.as_raw_fd(), w.as_raw_fd()])
        .collect();
    send_raw(a.as_fd(), b"{}", &raw).unwrap();
    assert!(recv::<ToWorker>(b.as_fd()).is_err());
}

fn config_with_routes(n: usize, name_len: usize) -> WorkerConfig {
    let links: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"type":"http","name":"{i}-{}","consumer":"E","target":"127.0.0.1:80/r{i}","socket":"127.0.0.1:1"}}"#,
                "n".repeat(name_len)
            )
        })
        .collect();
    WorkerConfig {
        endpoint: crate::plan::from_graph(&format!("[{}]", links.join(",")))
            .unwrap()
            .endpoints
            .remove(0),
        limits: Limits::default(),
        log_target: "stderr".into(),
        log_level: "info".into(),
        access_log: Default::default(),
    }
}

/// How many of our fds are the memfd named `name`: a leak check that
/// other tests running in parallel threads cannot disturb.
fn fds_named(name: &str) -> usize {
    let want = format!("/memfd:{name} (deleted)");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_str() == Some(want.as_str()))
        .count()
}

fn memfd_named(name: &str, body: &[u8], seals: SealFlag) -> OwnedFd {
    let cname = std::ffi::CString::new(name).unwrap();
    let fd = memfd_create(
        &cname,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let mut f = std::fs::File::from(fd);
    f.write_all(body).unwrap();
    let fd = OwnedFd::from(f);
    if !seals.is_empty() {
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
    }
    fd
}

#[test]
fn a_large_init_travels_as_a_sealed_blob_with_its_fds() {
    let (a, b) = socketpair().unwrap();
    let (p, _q) = nix::unistd::pipe().unwrap();
    let config = config_with_routes(400, 200);
    let m = ToWorker::Init { seq: 7, config };
    let body = serde_json::to_vec(&m).unwrap();
    assert!(body.len() > MAX_MSG, "{} bytes", body.len());
    send(a.as_fd(), &m, &[p.as_raw_fd()]).unwrap();
    // On the wire: a short header and one more fd than the message's.
    let (head, fds) = recv_raw(b.as_fd()).unwrap();
    assert_eq!(
        String::from_utf8(head.clone()).unwrap(),
        format!(r#"{{"msg":"blob","len":{}}}"#, body.len())
    );
    assert_eq!(fds.len(), 2);
    drop((head, fds));
    send(a.as_fd(), &m, &[p.as_raw_fd()]).unwrap();
    let (got, fds): (ToWorker, _) = recv(b.as_fd()).unwrap();
    assert_eq!(got, m);
    assert_eq!(fds.len(), 1, "the blob's memfd is not handed out");
    assert_eq!(
        nix::sys::stat::fstat(fds[0].as_raw_fd()).unwrap().st_mode & nix::libc::S_IFMT,
        nix::libc::S_IFIFO,
        "the listener slot holds the pipe, not the blob"
    );
    assert_eq!(fds_named("pvx-ctl-blob"), 0, "no blob memfd left open");
}

#[test]
fn small_messages_stay_inline() {
    let (a, b) = socketpair().unwrap();
    let m = ToWorker::Drain {
        seq: 1,
        deadline_ms: 5,
    };
    send(a.as_fd(), &m, &[]).unwrap();
    let (head, fds) = recv_raw(b.as_fd()).unwrap();
    assert_eq!(head, serde_json::to_vec(&m).unwrap());
    assert!(fds.is_empty());
}

/// Send `head` with `blob` (after `extra`), expect `recv` to refuse it
/// with an error matching `is`, and no copy of the blob left in this
/// process but the sender's.
fn refused(head: &str, name: &str, blob: OwnedFd, is: fn(&CtlError) -> bool) {
    let (a, b) = socketpair().unwrap();
    // A message fd before the blob (as an init's listener would be).
    let (p, q) = nix::unistd::pipe().unwrap();
    let pipe = std::fs::read_link(format!("/proc/self/fd/{}", p.as_raw_fd())).unwrap();
    let pipes = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| *l == pipe)
            .count()
    };
    send_raw(
        a.as_fd(),
        head.as_bytes(),
        &[p.as_raw_fd(), blob.as_raw_fd()],
    )
    .unwrap();
    assert_eq!((fds_named(name), pipes()), (1, 2));
    let r = recv::<ToWorker>(b.as_fd());
    match r {
        Err(ref e) if is(e) => {}
        other => panic!("{head}: unexpected {other:?}"),
    }
    assert_eq!(fds_named(name), 1, "{head}: the received memfd leaked");
    assert_eq!(pipes(), 2, "{head}: the message's other fd leaked");
    drop((blob, p, q));
    assert_eq!(fds_named(name), 0);
}

fn drain_json() -> Vec<u8> {
    br#"{"msg":"drain","seq":1,"deadline_ms":5}"#.to_vec()
}

#[test]
fn an_unsealed_memfd_is_refused() {
    let body = drain_json();
    let head = format!(r#"{{"msg":"blob","len":{}}}"#, body.len());
    refused(
        &head,
        "unsealed",
        memfd_named("unsealed", &body, SealFlag::empty()),
        |e| matches!(e, CtlError::Blob(m) if m.contains("not sealed")),
    );
    // Sealed for size but still writable: the sender could rewrite it.
    refused(
        &head,
        "writable",
        memfd_named(
            "writable",
            &body,
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
        |e| matches!(e, CtlError::Blob(m) if m.contains("not sealed")),
    );
}

#[test]
fn a_size_mismatch_is_refused() {
    let body = drain_json();
    for len in [body.len() - 1, body.len() + 1, 0] {
        refused(
            &format!(r#"{{"msg":"blob","len":{len}}}"#),
            "mismatch",
            memfd_named("mismatch", &body, BLOB_SEALS),
            |e| matches!(e, CtlError::Blob(m) if m.contains("header says")),
        );
    }
}

/// After 2038-01-19 a fresh memfd's timestamps no longer fit a 32-bit
/// time_t: a blob must still be read (an armhf worker used to refuse
/// it with EOVERFLOW from glibc's fstat, and so every large config).
#[test]
fn a_blob_dated_after_2038_is_read() {
    let body = drain_json();
    let f = std::fs::File::from(sealed_memfd(&body).unwrap());
    crate::stat::date_after_2038(&f);
    let got = read_blob(OwnedFd::from(f), body.len()).expect("a blob dated 2040");
    assert_eq!(got, body);
}

#[test]
fn an_oversized_blob_is_refused_before_reading() {
    // The header alone decides: nothing of 17 MiB is allocated.
    refused(
        &format!(r#"{{"msg":"blob","len":{}}}"#, MAX_BLOB + 1),
        "oversized",
        memfd_named("oversized", b"{}", BLOB_SEALS),
        |e| matches!(e, CtlError::TooLarge(n) if *n == MAX_BLOB + 1),
    );
    refused(
        r#"{"msg":"blob","len":18446744073709551615}"#,
        "oversized",
        memfd_named("oversized", b"{}", BLOB_SEALS),
        |e| matches!(e, CtlError::TooLarge(_)),
    );
    assert!(matches!(
        send_blob(
            socketpair().unwrap().0.as_fd(),
            &vec![b' '; MAX_BLOB + 1],
            &[]
        ),
        Err(CtlError::TooLarge(_))
    ));
}

#[test]
fn a_blob_that_is_not_a_memfd_or_lies_inside_is_refused() {
    let (a, b) = socketpair().unwrap();
    let (p, _q) = nix::unistd::pipe().unwrap();
    send_raw(a.as_fd(), br#"{"msg":"blob","len":2}"#, &[p.as_raw_fd()]).unwrap();
    assert!(matches!(
        recv::<ToWorker>(b.as_fd()),
        Err(CtlError::Blob(m)) if m.contains("not a memfd")
    ));
    // Sealed and sized right, but its message needs an fd it lacks,
    // or is itself another blob header.
    for body in [
        br#"{"msg":"update","seq":1,"config":null}"#.to_vec(),
        br#"{"msg":"blob","len":2}"#.to_vec(),
    ] {
        let head = format!(r#"{{"msg":"blob","len":{}}}"#, body.len());
        refused(
            &head,
            "inner",
            memfd_named("inner", &body, BLOB_SEALS),
            |e| matches!(e, CtlError::Bad(_)),
        );
    }
    // A header without any fd, or with extra fields.
    assert!(matches!(
        decode_frame::<ToWorker>(br#"{"msg":"blob","len":2}"#, 0),
        Err(CtlError::Blob(_))
    ));
    assert!(matches!(
        decode_frame::<ToWorker>(br#"{"msg":"blob","len":2,"x":1}"#, 1),
        Err(CtlError::Bad(_))
    ));
}

#[test]
fn worker_messages_have_a_smaller_cap() {
    assert!(matches!(
        decode_frame::<FromWorker>(
            format!(r#"{{"msg":"blob","len":{}}}"#, 2 * 1024 * 1024).as_bytes(),
            1
        ),
        Err(CtlError::TooLarge(_))
    ));
    assert_eq!(
        decode_frame::<ToWorker>(
            format!(r#"{{"msg":"blob","len":{}}}"#, 2 * 1024 * 1024).as_bytes(),
            1
        )
        .unwrap(),
        Frame::Blob {
            len: 2 * 1024 * 1024
        }
    );
}
