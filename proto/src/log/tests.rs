use super::*;

/// The header the crate writes, with its timestamp cut out:
/// `<PRI>Mmm dd hh:mm:ss rest` -> `<PRI>rest`.
fn untimed(line: &str) -> String {
    let (pri, rest) = line.split_at(line.find('>').unwrap() + 1);
    let b = rest.as_bytes();
    assert!(
        b.len() > 16 && b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[12] == b':',
        "no RFC 3164 timestamp: {line}"
    );
    assert_eq!(b[15], b' ', "{line}");
    format!("{pri}{}", &rest[16..])
}

fn pair(ident: &str) -> (Syslog, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    (syslog_logger(a, ident), b)
}

fn recv(b: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = b.recv(&mut buf).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn syslog_line_is_rfc3164_with_daemon_priority_ident_and_pid() {
    let (mut l, rx) = pair("pvx-worker-tcp");
    let pid = std::process::id();
    let b = body(
        Level::Warn,
        Some("endpoint 0.0.0.0:80 (host)"),
        "backend 10.0.0.2:80 unreachable",
    );
    assert_eq!(send_syslog(&mut l, "x", Level::Warn, &b), Sent::Yes);
    // daemon (3) * 8 + warning (4) = 28
    assert_eq!(
        untimed(&recv(&rx)),
        format!("<28>pvx-worker-tcp[{pid}]: warn: endpoint 0.0.0.0:80 (host): backend 10.0.0.2:80 unreachable")
    );
    for (level, pri) in [(Level::Info, 30), (Level::Error, 27), (Level::Debug, 31)] {
        send_syslog(&mut l, "x", level, &body(level, None, "x"));
        let line = untimed(&recv(&rx));
        assert!(
            line.starts_with(&format!("<{pri}>pvx-worker-tcp[")),
            "{line}"
        );
    }
}

/// A syslog that stops reading: sending never blocks, lines are
/// reported full (to be dropped and counted).
#[test]
fn full_syslog_socket_drops_without_blocking() {
    let (mut l, _rx) = pair("x");
    let b = body(Level::Info, None, &"y".repeat(900));
    let mut full = 0;
    for _ in 0..2000 {
        match send_syslog(&mut l, "x", Level::Info, &b) {
            Sent::Full => full += 1,
            Sent::Yes => {}
            Sent::Gone => panic!("a full socket is not a gone one"),
        }
    }
    assert!(full > 0);
}

#[test]
fn one_event_is_one_line_and_bounded() {
    let l = body(Level::Info, Some("e\u{1b}[2J"), "a\nb\r\nc\td\u{7f}");
    assert_eq!(l, r"info: e\x1b[2J: a\nb\r\nc\td\x7f");
    let long = "é".repeat(MAX_MSG);
    let l = body(Level::Info, None, &long);
    assert!(l.ends_with("..."));
    assert!(l.len() <= MAX_MSG + 16, "{}", l.len());
}

#[test]
fn levels_parse() {
    assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
    assert_eq!(Level::parse("err"), Some(Level::Error));
    assert_eq!(Level::parse("trace"), None);
    assert!(Level::Error < Level::Debug);
    assert!(Level::Error.filter() < Level::Debug.filter());
}
