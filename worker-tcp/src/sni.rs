//! TLS server name from a ClientHello, read with MSG_PEEK so the bytes stay
//! in the socket for the backend: tcp links sharing one address route on it
//! without terminating TLS.

#[derive(Debug, PartialEq, Eq)]
pub enum Sni {
    /// The hello is not complete yet; peek again when more arrives.
    NeedMore,
    /// A complete ClientHello, with its server name if it sent one.
    Found(Option<String>),
    /// Not a TLS ClientHello.
    NotTls,
}

/// Largest ClientHello record we wait for (one TLS record).
pub const MAX_HELLO: usize = 16 * 1024 + 5;

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|s| s[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]) as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|s| (s[0] as usize) << 16 | (s[1] as usize) << 8 | s[2] as usize)
    }
}

/// The whole record's length (its 5-byte header included) once `buf`
/// holds a TLS handshake record's header; `None` before that or for any
/// other bytes.
pub fn record_len(buf: &[u8]) -> Option<usize> {
    match buf {
        [0x16, 3, _, hi, lo, ..] => Some(5 + usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

pub fn parse(buf: &[u8]) -> Sni {
    if buf.len() < 5 {
        return if buf.is_empty() || buf[0] == 0x16 {
            Sni::NeedMore
        } else {
            Sni::NotTls
        };
    }
    if buf[0] != 0x16 || buf[1] != 3 {
        return Sni::NotTls;
    }
    let rec_len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if buf.len() < 5 + rec_len {
        return if 5 + rec_len > MAX_HELLO {
            Sni::NotTls
        } else {
            Sni::NeedMore
        };
    }
    match hello(&buf[5..5 + rec_len]) {
        Some(name) => Sni::Found(name),
        None => Sni::NotTls,
    }
}

/// `None`: malformed. `Some(None)`: a hello without server name.
fn hello(rec: &[u8]) -> Option<Option<String>> {
    let mut c = Cursor { b: rec, at: 0 };
    if c.u8()? != 1 {
        return None;
    }
    let len = c.u24()?;
    let mut c = Cursor {
        b: c.take(len)?,
        at: 0,
    };
    c.take(2 + 32)?; // client version, random
    let n = c.u8()?;
    c.take(n)?; // session id
    let n = c.u16()?;
    c.take(n)?; // cipher suites
    let n = c.u8()?;
    c.take(n)?; // compression methods
    if c.at == c.b.len() {
        return Some(None);
    }
    let n = c.u16()?;
    let mut ext = Cursor {
        b: c.take(n)?,
        at: 0,
    };
    while ext.at < ext.b.len() {
        let ty = ext.u16()?;
        let n = ext.u16()?;
        let data = ext.take(n)?;
        if ty != 0 {
            continue;
        }
        let mut l = Cursor { b: data, at: 0 };
        let n = l.u16()?;
        let mut names = Cursor {
            b: l.take(n)?,
            at: 0,
        };
        while names.at < names.b.len() {
            let kind = names.u8()?;
            let n = names.u16()?;
            let name = names.take(n)?;
            if kind == 0 {
                return Some(Some(std::str::from_utf8(name).ok()?.to_ascii_lowercase()));
            }
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello carrying `name` as SNI.
    pub fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = vec![0u8];
        sni.extend((name.len() as u16).to_be_bytes());
        sni.extend(name.as_bytes());
        let mut ext_data = (sni.len() as u16).to_be_bytes().to_vec();
        ext_data.extend(sni);
        let mut exts = vec![0, 0];
        exts.extend((ext_data.len() as u16).to_be_bytes());
        exts.extend(ext_data);
        let mut body = vec![3, 3];
        body.extend([0u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn finds_server_name() {
        let h = client_hello("Api.Example.com");
        assert_eq!(parse(&h), Sni::Found(Some("api.example.com".into())));
        assert_eq!(parse(&h[..h.len() - 1]), Sni::NeedMore);
        assert_eq!(parse(&h[..3]), Sni::NeedMore);
    }

    #[test]
    fn rejects_plain_text_and_garbage() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Sni::NotTls);
        let mut h = client_hello("a");
        h[5] = 2; // not a ClientHello
        assert_eq!(parse(&h), Sni::NotTls);
        let mut h = client_hello("a");
        let n = h.len();
        h[n - 3] = 0xff; // name length (high byte) beyond the record
        assert_eq!(parse(&h), Sni::NotTls);
    }
}
