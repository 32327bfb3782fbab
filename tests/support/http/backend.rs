//! A real HTTP/1.1 origin server for tests, on a real socket (tcp or
//! unix), one thread per connection. It keeps connections alive, reads
//! Content-Length and chunked bodies, and records every request head it
//! receives so a test can prove what the backend never saw.
//!
//! Paths (after any prefix stripping by the proxy):
//! - `/echo...` (and anything unknown): 200, body = method, target and
//!   headers, one per line, plus `body-len` and `body-hash` of the request
//!   body.
//! - `/created` (any query): 201 with `X-Custom: yes` and a chunked body
//!   of 3 chunks.
//! - `/big/N`: 200 with N bytes of `pattern(N, 7)`, Content-Length.
//! - `/slow/MS`: waits MS milliseconds, then answers like `/echo`.
//! - `/silent`: reads the request and never answers.
//! - `/upgrade`: 101 if asked to upgrade, then echoes bytes upper-cased
//!   until EOF, then sends `BYE` and closes.
//! - `/close`: 200 without length, body `until-close`, then closes.
//! - `/drop-next`: answers like `/echo` (keep-alive), then reads the next
//!   request on that connection and closes without a word: what a
//!   backend's own idle timeout does to a pooled connection.
//! - `/nocontent`: 204. `/continue`: honours `Expect: 100-continue`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Default)]
pub struct Seen {
    /// Every request head received, as text.
    pub heads: Mutex<Vec<String>>,
    /// Connections accepted that carried at least one request head.
    pub conns: AtomicUsize,
}

pub struct Backend {
    pub addr: Option<SocketAddr>,
    pub path: Option<PathBuf>,
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// The backend as a graph `socket` value.
    pub fn socket(&self) -> String {
        match (&self.addr, &self.path) {
            (Some(a), _) => a.to_string(),
            (_, Some(p)) => p.display().to_string(),
            _ => unreachable!(),
        }
    }

    pub fn heads(&self) -> Vec<String> {
        self.seen.heads.lock().unwrap().clone()
    }

    pub fn conns(&self) -> usize {
        self.seen.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        if let Some(a) = self.addr {
            let _ = TcpStream::connect_timeout(&a, Duration::from_millis(200));
        }
        if let Some(p) = &self.path {
            let _ = UnixStream::connect(p);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Start a backend on `bind` (e.g. "127.0.0.1:0").
pub fn tcp(bind: &str) -> Backend {
    from_tcp_listener(TcpListener::bind(bind).expect("bind test backend"))
}

/// Start a backend listening on `bind` inside network namespace `netns`
/// (by name, under /run/netns). The network namespace is per thread: a
/// short-lived thread enters it and binds; the socket stays in that
/// namespace whichever thread serves it.
pub fn tcp_in_netns(netns: &str, bind: &str) -> Backend {
    let path = format!("/run/netns/{netns}");
    let bind = bind.to_string();
    let l = thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into test netns");
        TcpListener::bind(&bind).expect("bind inside netns")
    })
    .join()
    .expect("netns bind thread");
    from_tcp_listener(l)
}

fn from_tcp_listener(l: TcpListener) -> Backend {
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, st2) = (seen.clone(), stop.clone());
    thread::spawn(move || {
        for c in l.incoming() {
            if st2.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(c) = c {
                let _ = c.set_nodelay(true);
                spawn_conn(c, s2.clone());
            }
        }
    });
    Backend {
        addr: Some(addr),
        path: None,
        seen,
        stop,
    }
}

/// Start a backend on a unix socket at `path`.
pub fn unix(path: &Path) -> Backend {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).expect("bind unix test backend");
    from_unix_listener(l, path)
}

pub fn from_unix_listener(l: UnixListener, path: &Path) -> Backend {
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, st2) = (seen.clone(), stop.clone());
    thread::spawn(move || {
        for c in l.incoming() {
            if st2.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(c) = c {
                spawn_conn(c, s2.clone());
            }
        }
    });
    Backend {
        addr: None,
        path: Some(path.to_path_buf()),
        seen,
        stop,
    }
}

trait Conn: Read + Write + Send + 'static {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>>;
}
impl Conn for TcpStream {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
}
impl Conn for UnixStream {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
}

fn spawn_conn<C: Conn>(c: C, seen: Arc<Seen>) {
    thread::spawn(move || {
        let _ = serve(c, seen);
    });
}

struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<(Req, String)>> {
    let mut raw = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        raw.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut p = httparse::Request::new(&mut hs);
    p.parse(raw.as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let req = Req {
        method: p.method.unwrap_or("").to_string(),
        target: p.path.unwrap_or("").to_string(),
        headers: p
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).to_string(),
                )
            })
            .collect(),
    };
    Ok(Some((req, raw)))
}

fn read_body(r: &mut impl BufRead, req: &Req) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if req
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    if t == "\r\n" || t.is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok(body)
}

fn echo_body(req: &Req, body: &[u8]) -> String {
    let mut s = format!("{} {}\n", req.method, req.target);
    for (n, v) in &req.headers {
        s.push_str(&format!("{}: {}\n", n.to_ascii_lowercase(), v));
    }
    s.push_str(&format!(
        "body-len: {}\nbody-hash: {:016x}\n",
        body.len(),
        super::fnv(body)
    ));
    s
}

/// The chunked body `/bigchunked/N` sends: `pattern(n, 7)` in chunks of
/// 1 MiB (the last one shorter), then the last chunk.
pub fn big_chunked(n: usize) -> Vec<u8> {
    let plain = crate::pattern(n, 7);
    let mut wire = Vec::with_capacity(n + 64);
    for c in plain.chunks(1 << 20) {
        wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        wire.extend_from_slice(c);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

fn serve<C: Conn>(c: C, seen: Arc<Seen>) -> std::io::Result<()> {
    let mut w = c.try_clone_box()?;
    let mut r = BufReader::new(c);
    let mut first = true;
    while let Some((req, raw)) = read_head(&mut r)? {
        if std::mem::take(&mut first) {
            // Counted once it carries a request: a health check's connect
            // (connected, closed, nothing sent) is no backend connection.
            seen.conns.fetch_add(1, Ordering::SeqCst);
        }
        seen.heads.lock().unwrap().push(raw);
        if req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut r, &req)?;
        let path = req.target.clone();
        if path == "/created" || path.starts_with("/created?") {
            w.write_all(
                b"HTTP/1.1 201 Created\r\nX-Custom: yes\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nfirst\r\n6\r\nsecond\r\n5\r\nthird\r\n0\r\n\r\n",
            )?;
        } else if let Some(n) = path.strip_prefix("/big/") {
            let n: usize = n.parse().unwrap_or(0);
            w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())?;
            w.write_all(&crate::pattern(n, 7))?;
        } else if let Some(n) = path.strip_prefix("/bigchunked/") {
            let n: usize = n.parse().unwrap_or(0);
            w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            w.write_all(&big_chunked(n))?;
        } else if path == "/silent" {
            thread::sleep(Duration::from_secs(30));
            return Ok(());
        } else if path == "/nocontent" {
            w.write_all(b"HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n")?;
        } else if path == "/drop-next" {
            let text = echo_body(&req, &body);
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            )?;
            if let Some((_, raw)) = read_head(&mut r)? {
                seen.heads.lock().unwrap().push(format!("DROPPED {raw}"));
            }
            return Ok(());
        } else if path == "/close" {
            w.write_all(b"HTTP/1.1 200 OK\r\nX-Framing: close\r\n\r\nuntil-close")?;
            return Ok(());
        } else if path == "/upgrade" && req.header("upgrade").is_some() {
            w.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            )?;
            let mut buf = [0u8; 4096];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n].to_ascii_uppercase())?;
            }
            w.write_all(b"BYE")?;
            return Ok(());
        } else {
            if let Some(ms) = path.strip_prefix("/slow/") {
                thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            }
            let text = echo_body(&req, &body);
            let head_only = req.method == "HEAD";
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    text.len()
                )
                .as_bytes(),
            )?;
            if !head_only {
                w.write_all(text.as_bytes())?;
            }
        }
        if req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
    Ok(())
}
