//! A stand-in for Pantavisor's control socket: a small HTTP/1.0 server on
//! a unix socket answering `GET /xconnect-graph` with whatever graph the
//! test sets, or with the status the test sets; or, stalled, a
//! Pantavisor that accepts, reads the request and never answers.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    graph: Mutex<String>,
    status: AtomicU16,
    hits: AtomicUsize,
    stop: AtomicBool,
    stall: AtomicBool,
    /// Connections taken while stalled, held open and never answered.
    held: Mutex<Vec<UnixStream>>,
}

pub struct FakeCtrl {
    pub path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FakeCtrl {
    /// Serve `graph` on a new socket at `path`.
    pub fn start(path: &Path, graph: &str) -> FakeCtrl {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).expect("bind fake control socket");
        l.set_nonblocking(true).expect("O_NONBLOCK");
        let shared = Arc::new(Shared::default());
        *shared.graph.lock().unwrap() = graph.to_string();
        shared.status.store(200, Ordering::SeqCst);
        let sh = Arc::clone(&shared);
        let thread = thread::spawn(move || serve(l, sh));
        FakeCtrl {
            path: path.to_path_buf(),
            shared,
            thread: Some(thread),
        }
    }

    pub fn set_graph(&self, graph: &str) {
        *self.shared.graph.lock().unwrap() = graph.to_string();
    }

    /// Answer with this status (200 = the graph).
    pub fn set_status(&self, code: u16) {
        self.shared.status.store(code, Ordering::SeqCst);
    }

    /// From now on accept and read requests but never answer them.
    pub fn set_stall(&self, on: bool) {
        self.shared.stall.store(on, Ordering::SeqCst);
    }

    /// How many connections were taken stalled so far; the index of each
    /// is its order of arrival.
    pub fn stalled(&self) -> usize {
        self.shared.held.lock().unwrap().len()
    }

    /// Whether the client (the supervisor) still holds stalled connection
    /// `i` open: it has not given up on that request yet.
    pub fn stalled_is_open(&self, i: usize) -> bool {
        let held = self.shared.held.lock().unwrap();
        let Some(mut c) = held.get(i) else {
            return false;
        };
        let _ = c.set_nonblocking(true);
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Stop serving and remove the socket: the control socket is gone.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for FakeCtrl {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(l: UnixListener, sh: Arc<Shared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        let mut c = match l.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let _ = c.set_nonblocking(false);
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let mut req = Vec::new();
        let mut b = [0u8; 512];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        if sh.stall.load(Ordering::SeqCst) {
            sh.held.lock().unwrap().push(c);
            continue;
        }
        let head = String::from_utf8_lossy(&req);
        let code = sh.status.load(Ordering::SeqCst);
        let answer = if !head.starts_with("GET /xconnect-graph HTTP/1.0\r\n") {
            "HTTP/1.0 404 Not Found\r\n\r\nunknown request".to_string()
        } else if code != 200 {
            format!("HTTP/1.0 {code} Failure\r\n\r\npantavisor says no")
        } else {
            let g = sh.graph.lock().unwrap().clone();
            // Like pv-ctrl: HTTP/1.0, the body ends when the socket closes.
            format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{g}")
        };
        let _ = c.write_all(answer.as_bytes());
        sh.hits.fetch_add(1, Ordering::SeqCst);
    }
}
