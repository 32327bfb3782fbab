//! A backend that misbehaves on purpose: each request it reads (head and
//! body, Content-Length or chunked with its trailers) goes to a script that
//! says what to write back, byte for byte, or to close without a word. It
//! records every request and every byte each connection received, so a
//! test can prove what a backend saw and what it never saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One request as the backend read it.
#[derive(Debug, Clone)]
pub struct Req {
    /// Which accepted connection (0, 1, ...).
    pub conn: usize,
    /// Which request on that connection (0 = first).
    pub nth: usize,
    pub method: String,
    pub target: String,
    /// The head as text, through the blank line.
    pub head: String,
    /// The body bytes as they came (chunked framing and trailers included).
    pub body: Vec<u8>,
}

/// What the script does with a request: these bytes, or `None` to close
/// the connection without answering.
pub type Script = dyn Fn(&Req) -> Option<Vec<u8>> + Send + Sync;

#[derive(Default)]
struct Shared {
    reqs: Mutex<Vec<Req>>,
    /// Every byte each connection received, by connection index.
    raw: Mutex<Vec<Vec<u8>>>,
    conns: AtomicUsize,
    /// Connections whose handler ended (peer closed, error, or script).
    ended: AtomicUsize,
}

pub struct Scripted {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Scripted {
    pub fn socket(&self) -> String {
        self.addr.to_string()
    }

    pub fn reqs(&self) -> Vec<Req> {
        self.shared.reqs.lock().unwrap().clone()
    }

    /// Everything connection `i` received so far.
    pub fn raw(&self, i: usize) -> Vec<u8> {
        self.shared
            .raw
            .lock()
            .unwrap()
            .get(i)
            .cloned()
            .unwrap_or_default()
    }

    pub fn conns(&self) -> usize {
        self.shared.conns.load(Ordering::SeqCst)
    }

    pub fn ended(&self) -> usize {
        self.shared.ended.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Start a scripted backend on a loopback port.
pub fn start(script: impl Fn(&Req) -> Option<Vec<u8>> + Send + Sync + 'static) -> Scripted {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind scripted backend");
    let addr = l.local_addr().expect("scripted backend address");
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let script: Arc<Script> = Arc::new(script);
    let (sh, st) = (shared.clone(), stop.clone());
    thread::spawn(move || {
        for c in l.incoming() {
            if st.load(Ordering::SeqCst) {
                break;
            }
            let Ok(c) = c else { continue };
            let conn = sh.conns.fetch_add(1, Ordering::SeqCst);
            sh.raw.lock().unwrap().push(Vec::new());
            let (sh, script) = (sh.clone(), script.clone());
            thread::spawn(move || {
                let _ = serve(c, conn, &sh, &*script);
                sh.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Scripted { addr, shared, stop }
}

/// A reader that records what it reads in the connection's raw log.
struct Tap<'a> {
    s: TcpStream,
    conn: usize,
    shared: &'a Shared,
}

impl Read for Tap<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.s.read(buf)?;
        if let Some(r) = self.shared.raw.lock().unwrap().get_mut(self.conn) {
            r.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

fn line(r: &mut impl BufRead, into: &mut Vec<u8>) -> std::io::Result<bool> {
    let start = into.len();
    r.read_until(b'\n', into)?;
    Ok(into.len() > start)
}

fn serve(c: TcpStream, conn: usize, shared: &Shared, script: &Script) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(Tap { s: c, conn, shared });
    for nth in 0.. {
        let mut head = Vec::new();
        loop {
            if !line(&mut r, &mut head)? {
                return Ok(());
            }
            if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
                break;
            }
        }
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut p = httparse::Request::new(&mut hs);
        if p.parse(&head).is_err() {
            return Ok(());
        }
        let value = |name: &str| {
            p.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let mut body = Vec::new();
        if value("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let at = body.len();
                if !line(&mut r, &mut body)? {
                    return Ok(());
                }
                let size_line = String::from_utf8_lossy(&body[at..]).to_string();
                let hex = size_line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(hex, 16).unwrap_or(0);
                if size == 0 {
                    // Trailer lines through the empty one.
                    loop {
                        let at = body.len();
                        if !line(&mut r, &mut body)? {
                            return Ok(());
                        }
                        if &body[at..] == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let at = body.len();
                body.resize(at + size + 2, 0);
                r.read_exact(&mut body[at..])?;
            }
        } else if let Some(n) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        let req = Req {
            conn,
            nth,
            method: p.method.unwrap_or("").to_string(),
            target: p.path.unwrap_or("").to_string(),
            head: String::from_utf8_lossy(&head).to_string(),
            body,
        };
        shared.reqs.lock().unwrap().push(req.clone());
        match script(&req) {
            Some(answer) => w.write_all(&answer)?,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// A `200` with this body and its Content-Length.
pub fn ok(body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}
