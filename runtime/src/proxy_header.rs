//! PROXY protocol header (HAProxy's spec, v1 text and v2 binary) that a tcp
//! link with `proxy_protocol` sends to its backend before any client byte,
//! so the backend learns the real client address. Here in runtime, not in
//! the tcp worker, because the health checks (`prober.rs`) open their
//! connections to such a backend with it too ([`local`]).

use proto::types::ProxyProtocol;
use std::net::SocketAddr;

const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// `src`: the client; `dst`: the address it connected to. Unknown or mixed
/// families give the protocol's "UNKNOWN"/LOCAL form.
pub fn build(v: ProxyProtocol, src: Option<SocketAddr>, dst: Option<SocketAddr>) -> Vec<u8> {
    let pair = match (src, dst) {
        (Some(s), Some(d)) if s.is_ipv4() == d.is_ipv4() => Some((s, d)),
        _ => None,
    };
    match v {
        ProxyProtocol::V1 => match pair {
            Some((s, d)) => {
                let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {fam} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                )
                .into_bytes()
            }
            None => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        ProxyProtocol::V2 => {
            let mut h = V2_SIG.to_vec();
            match pair {
                Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
                    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                    h.extend_from_slice(&s.port().to_be_bytes());
                    h.extend_from_slice(&d.port().to_be_bytes());
                }
                Some((SocketAddr::V6(s), SocketAddr::V6(d))) => {
                    h.extend_from_slice(&[0x21, 0x21, 0, 36]);
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                    h.extend_from_slice(&s.port().to_be_bytes());
                    h.extend_from_slice(&d.port().to_be_bytes());
                }
                // LOCAL command, no address block.
                _ => h.extend_from_slice(&[0x20, 0x00, 0, 0]),
            }
            h
        }
    }
}

/// The header of a connection the proxy makes on its own behalf (a health
/// check): v2's LOCAL command, v1's `PROXY UNKNOWN`, which a backend that
/// requires a header takes as well-formed and serves as a direct one.
pub fn local(v: ProxyProtocol) -> Vec<u8> {
    build(v, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_unknown() {
        let h = build(
            ProxyProtocol::V1,
            "1.2.3.4:5".parse().ok(),
            "6.7.8.9:10".parse().ok(),
        );
        assert_eq!(h, b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n");
        assert_eq!(build(ProxyProtocol::V1, None, None), b"PROXY UNKNOWN\r\n");
        let h6 = build(
            ProxyProtocol::V1,
            "[::1]:5".parse().ok(),
            "[::2]:6".parse().ok(),
        );
        assert_eq!(h6, b"PROXY TCP6 ::1 ::2 5 6\r\n");
    }

    #[test]
    fn v2_layout() {
        let h = build(
            ProxyProtocol::V2,
            "1.2.3.4:5".parse().ok(),
            "6.7.8.9:10".parse().ok(),
        );
        assert_eq!(&h[..12], &V2_SIG);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[1, 2, 3, 4]);
        assert_eq!(&h[24..26], &5u16.to_be_bytes());
        assert_eq!(h.len(), 28);
        let h6 = build(
            ProxyProtocol::V2,
            "[::1]:5".parse().ok(),
            "[::2]:6".parse().ok(),
        );
        assert_eq!(h6.len(), 16 + 36);
        assert_eq!(build(ProxyProtocol::V2, None, None).len(), 16);
        // A check's header: the LOCAL command (0x20), family UNSPEC, no
        // address block.
        let l = local(ProxyProtocol::V2);
        assert_eq!((&l[..12], &l[12..]), (&V2_SIG[..], &[0x20, 0, 0, 0][..]));
        assert_eq!(local(ProxyProtocol::V1), b"PROXY UNKNOWN\r\n");
    }
}
