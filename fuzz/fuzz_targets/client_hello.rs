//! TLS ClientHello server names (worker-tcp `sni.rs`).
//!
//! Raw input: no panic; a hello found stays found, with the same name,
//! whatever follows it, and every shorter prefix of its record asks for
//! more (the peek loop must never give up on a hello that arrives in
//! pieces); a name found is lower case; nothing past one record
//! (`MAX_HELLO`) is waited for.
//!
//! Built input: the same bytes also describe a hello (session id, cipher
//! suites, extensions before the server name, the name itself) that is
//! written out here; the parser must find exactly that name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use worker_tcp::sni::{parse, Sni, MAX_HELLO};

fn vec16(out: &mut Vec<u8>, body: &[u8]) {
    out.extend((body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// A ClientHello from the input's bytes, and the name it carries.
fn build(data: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (&sid_len, rest) = data.split_first()?;
    let (&name_len, rest) = rest.split_first()?;
    let (&n_ext, rest) = rest.split_first()?;
    let sid_len = sid_len as usize % 33;
    let name_len = name_len as usize % 80;
    let name = rest.get(..name_len)?.to_vec();
    let noise = &rest[name_len..];

    let mut exts = Vec::new();
    let mut chunks = noise.chunks(7);
    for _ in 0..n_ext % 5 {
        let Some(c) = chunks.next() else { break };
        // Any type but server_name (0), with the chunk as its data.
        let ty = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&1)]).max(1);
        exts.extend(ty.to_be_bytes());
        vec16(&mut exts, c);
    }
    let mut entry = vec![0u8];
    vec16(&mut entry, &name);
    let mut list = Vec::new();
    vec16(&mut list, &entry);
    exts.extend([0, 0]);
    vec16(&mut exts, &list);

    let mut body = vec![3, 3];
    body.extend([0x5a; 32]);
    body.push(sid_len as u8);
    body.extend(std::iter::repeat_n(0xa5, sid_len));
    vec16(&mut body, &[0x13, 0x01, 0x13, 0x02]);
    body.extend([1, 0]);
    vec16(&mut body, &exts);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    vec16(&mut rec, &hs);
    Some((rec, name))
}

fuzz_target!(|data: &[u8]| {
    let got = parse(data);
    if let Sni::Found(name) = &got {
        if let Some(n) = name {
            assert_eq!(*n, n.to_ascii_lowercase());
        }
        let rec_end = 5 + u16::from_be_bytes([data[3], data[4]]) as usize;
        for cut in [0, 1, 4, 5, rec_end / 2, rec_end - 1] {
            assert_eq!(
                parse(&data[..cut]),
                Sni::NeedMore,
                "gave up on a prefix of {cut} bytes"
            );
        }
        let mut longer = data[..rec_end].to_vec();
        longer.extend_from_slice(b"\x17\x03\x03 more bytes");
        assert_eq!(
            parse(&longer),
            got,
            "bytes after the record changed the answer"
        );
    }
    if got == Sni::NeedMore {
        assert!(data.len() < MAX_HELLO, "waits for more than one record");
    }

    if let Some((rec, name)) = build(data) {
        let want = match std::str::from_utf8(&name) {
            Ok(s) => Sni::Found(Some(s.to_ascii_lowercase())),
            Err(_) => Sni::NotTls,
        };
        assert_eq!(parse(&rec), want, "built hello: {rec:02x?}");
    }
});
