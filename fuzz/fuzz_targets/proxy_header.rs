//! PROXY protocol headers (`runtime/src/proxy_header.rs`), read back by a
//! strict parser of HAProxy's spec (proxy-protocol.txt, v1 §2.1 and v2
//! §2.2) written here, independent of the writer.
//!
//! Input: arbitrary version, client and local address (v4 or v6, or
//! none). Invariants: the header parses strictly, consumes exactly its
//! bytes, and gives back the same addresses and ports; without two
//! addresses of one family it is v1 `UNKNOWN` / v2 `LOCAL`.

#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use proto::types::ProxyProtocol;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use worker_tcp::proxy_header::build;

#[derive(Debug, PartialEq)]
enum Parsed {
    /// Addresses of the client and of the address it connected to.
    Proxy(SocketAddr, SocketAddr),
    /// v1 UNKNOWN or v2 LOCAL: the backend uses the connection's own.
    Unknown,
}

/// A port: decimal, 0..=65535, no sign, no leading zero (v1 §2.1).
fn port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(format!("bad port {s:?}"));
    }
    s.parse().map_err(|_| format!("port out of range {s:?}"))
}

fn v1(h: &[u8]) -> Result<Parsed, String> {
    // At most 107 bytes including the CRLF, which ends the line and only it.
    if h.len() > 107 {
        return Err("v1 line longer than 107 bytes".into());
    }
    let line = h.strip_suffix(b"\r\n").ok_or("v1 line not ended by CRLF")?;
    if line.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        return Err("CR or LF inside the v1 line".into());
    }
    let line = std::str::from_utf8(line).map_err(|_| "v1 line not ASCII")?;
    let f: Vec<&str> = line.split(' ').collect();
    match f.as_slice() {
        ["PROXY", "UNKNOWN"] => Ok(Parsed::Unknown),
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, dst, sp, dp] => {
            let ip = |s: &str| -> Result<IpAddr, String> {
                if *fam == "TCP4" {
                    s.parse::<Ipv4Addr>()
                        .map(IpAddr::V4)
                        .map_err(|_| format!("bad IPv4 {s:?}"))
                } else {
                    s.parse::<Ipv6Addr>()
                        .map(IpAddr::V6)
                        .map_err(|_| format!("bad IPv6 {s:?}"))
                }
            };
            Ok(Parsed::Proxy(
                SocketAddr::new(ip(src)?, port(sp)?),
                SocketAddr::new(ip(dst)?, port(dp)?),
            ))
        }
        _ => Err(format!("bad v1 line {line:?}")),
    }
}

const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v2(h: &[u8]) -> Result<Parsed, String> {
    let rest = h.strip_prefix(SIG).ok_or("no v2 signature")?;
    let [ver_cmd, fam, l0, l1, block @ ..] = rest else {
        return Err("v2 header shorter than 16 bytes".into());
    };
    if ver_cmd >> 4 != 2 {
        return Err(format!("v2 version {}", ver_cmd >> 4));
    }
    // The length covers exactly what follows: nothing more may be sent
    // before the client's bytes.
    if u16::from_be_bytes([*l0, *l1]) as usize != block.len() {
        return Err("v2 length is not the header's".into());
    }
    match (ver_cmd & 0xf, fam) {
        (0, 0x00) if block.is_empty() => Ok(Parsed::Unknown),
        (1, 0x11) if block.len() == 12 => {
            let ip = |o: usize| Ipv4Addr::new(block[o], block[o + 1], block[o + 2], block[o + 3]);
            let p = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            Ok(Parsed::Proxy(
                SocketAddr::new(ip(0).into(), p(8)),
                SocketAddr::new(ip(4).into(), p(10)),
            ))
        }
        (1, 0x21) if block.len() == 36 => {
            let ip = |o: usize| {
                Ipv6Addr::from(<[u8; 16]>::try_from(&block[o..o + 16]).expect("16 bytes"))
            };
            let p = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            Ok(Parsed::Proxy(
                SocketAddr::new(ip(0).into(), p(32)),
                SocketAddr::new(ip(16).into(), p(34)),
            ))
        }
        (cmd, fam) => Err(format!(
            "v2 command {cmd} family {fam:#x} with {} address bytes",
            block.len()
        )),
    }
}

fn addr(u: &mut Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<Option<SocketAddr>> {
    Ok(match u8::arbitrary(u)? % 3 {
        0 => None,
        1 => Some(SocketAddr::new(
            Ipv4Addr::from(u32::arbitrary(u)?).into(),
            u16::arbitrary(u)?,
        )),
        _ => {
            // v6 with a flow label and scope id too: neither belongs on the wire.
            let ip = Ipv6Addr::from(u128::arbitrary(u)?);
            let a = std::net::SocketAddrV6::new(
                ip,
                u16::arbitrary(u)?,
                u32::arbitrary(u)?,
                u32::arbitrary(u)?,
            );
            Some(a.into())
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(v2_wanted), Ok(src), Ok(dst)) = (bool::arbitrary(&mut u), addr(&mut u), addr(&mut u))
    else {
        return;
    };
    let version = if v2_wanted {
        ProxyProtocol::V2
    } else {
        ProxyProtocol::V1
    };
    let h = build(version, src, dst);
    let got = if v2_wanted { v2(&h) } else { v1(&h) };
    let got = got.unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&h)));
    let want = match (src, dst) {
        (Some(s), Some(d)) if s.is_ipv4() == d.is_ipv4() => {
            // Only address and port travel.
            Parsed::Proxy(
                SocketAddr::new(s.ip(), s.port()),
                SocketAddr::new(d.ip(), d.port()),
            )
        }
        _ => Parsed::Unknown,
    };
    assert_eq!(got, want);
});
