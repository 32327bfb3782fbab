use super::super::tests::sock_path;
use super::super::CTRL_TIMEOUT;
use super::*;
use crate::http_client::MAX_HEAD;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

fn serve_once(answer: Vec<u8>) -> (PathBuf, std::thread::JoinHandle<String>) {
    let p = sock_path("once");
    let l = UnixListener::bind(&p).unwrap();
    let h = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 256];
        while !req.ends_with(b"\r\n\r\n") {
            let n = c.read(&mut b).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&b[..n]);
        }
        // The client may give up before reading it all.
        let _ = c.write_all(&answer);
        String::from_utf8_lossy(&req).into_owned()
    });
    (p, h)
}

/// One exchange driven to its end by a poll of its own.
fn get_graph(p: &Path, timeout: Duration) -> Result<String, String> {
    let mut poll = mio::Poll::new().unwrap();
    let mut x = Exchange::start(p, poll.registry(), timeout, false)?;
    let mut events = mio::Events::with_capacity(4);
    loop {
        if let Some(r) = x.advance() {
            x.close(poll.registry());
            return r;
        }
        let left = x.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within deadline ({})", x.stage()));
        }
        poll.poll(&mut events, Some(left)).unwrap();
    }
}

fn answer(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn reads_a_200_with_and_without_length() {
    let (p, h) = serve_once(answer("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]"));
    assert_eq!(get_graph(&p, CTRL_TIMEOUT).unwrap(), "[]");
    assert!(h
        .join()
        .unwrap()
        .starts_with("GET /xconnect-graph HTTP/1.0\r\n"));
    let _ = std::fs::remove_file(&p);
    let (p, h) = serve_once(answer(
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[ ]",
    ));
    assert_eq!(get_graph(&p, CTRL_TIMEOUT).unwrap(), "[ ]");
    h.join().unwrap();
    let _ = std::fs::remove_file(&p);
}

#[test]
fn errors_say_what_went_wrong() {
    let cases = [
        (
            "HTTP/1.0 404 Not Found\r\n\r\nno such endpoint",
            "answered 404: no such endpoint",
        ),
        ("garbage\r\n\r\n", "malformed"),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n[]",
            "closed after 2 of 10",
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Le",
            "closed in the middle of the answer head",
        ),
        ("", "closed without answering"),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]",
            "conflicting Content-Length",
        ),
        (
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
            "Transfer-Encoding",
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n[]",
            "answer larger than",
        ),
    ];
    for (a, want) in cases {
        let (p, h) = serve_once(answer(a));
        let e = get_graph(&p, CTRL_TIMEOUT).unwrap_err();
        assert!(e.contains(want), "{a:?}: {e}");
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }
    let e = get_graph(Path::new("/nonexistent/pv-ctrl"), CTRL_TIMEOUT).unwrap_err();
    assert!(e.contains("connect"), "{e}");
}

#[test]
fn oversized_answers_are_cut_short() {
    let mut body = answer("HTTP/1.0 200 OK\r\n\r\n");
    body.resize(MAX_BODY + 64 * 1024, b' ');
    let (p, h) = serve_once(body);
    let e = get_graph(&p, CTRL_TIMEOUT).unwrap_err();
    assert!(e.contains("answer larger than"), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_file(&p);
    let mut head = answer("HTTP/1.0 200 OK\r\nX-Pad: ");
    head.resize(MAX_HEAD + 1024, b'a');
    let (p, h) = serve_once(head);
    let e = get_graph(&p, CTRL_TIMEOUT).unwrap_err();
    assert!(e.contains("answer head larger than"), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_file(&p);
}

/// The deadline covers the whole exchange: an answer dribbled a byte
/// at a time does not extend it.
#[test]
fn a_dribbled_answer_times_out() {
    let p = sock_path("dribble");
    let l = UnixListener::bind(&p).unwrap();
    let h = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        for b in b"HTTP/1.0 200 OK\r\nX-Slow: ".iter().cycle() {
            if c.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let e = get_graph(&p, Duration::from_millis(300)).unwrap_err();
    assert!(
        e.contains("no answer within deadline (reading the answer)"),
        "{e}"
    );
    h.join().unwrap();
    let _ = std::fs::remove_file(&p);
}
