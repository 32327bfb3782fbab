use super::*;

/// The chunks, then the trailer section as the pump does it: returns
/// (bytes of the body, done); the forwarded trailers are dropped.
fn scan(input: &[u8]) -> Result<(usize, bool), ChunkError> {
    let mut c = Chunked::new();
    let mut n = c.feed(input)?;
    if c.in_trailers() {
        n += c.trailers(&input[n..], &mut Vec::new())?.unwrap_or(0);
    }
    Ok((n, c.is_done()))
}

/// Feed one byte at a time: every state must survive a split anywhere
/// (the trailer section is given whole bytes-so-far, as the pump does).
fn scan_bytewise(input: &[u8]) -> Result<(usize, bool), ChunkError> {
    let mut c = Chunked::new();
    let mut total = 0;
    for (i, b) in input.iter().enumerate() {
        if c.in_trailers() {
            if let Some(n) = c.trailers(&input[total..=i], &mut Vec::new())? {
                total += n;
            }
            continue;
        }
        let n = c.feed(std::slice::from_ref(b))?;
        total += n;
        if n == 0 {
            break;
        }
    }
    Ok((total, c.is_done()))
}

fn forwarded_trailers(section: &[u8]) -> Result<Option<(usize, String)>, ChunkError> {
    let mut out = Vec::new();
    Ok(parse_trailers(section, &mut out)?.map(|n| (n, String::from_utf8(out).unwrap())))
}

#[test]
fn simple_body_and_next_message() {
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    let mut input = body.to_vec();
    input.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(scan(&input), Ok((body.len(), true)));
    assert_eq!(scan_bytewise(&input), Ok((body.len(), true)));
}

#[test]
fn skipped_data_still_needs_its_crlf() {
    let mut c = Chunked::new();
    assert_eq!(c.feed(b"10\r\nabcd"), Ok(8));
    assert_eq!(c.data_left(), 12);
    c.skip_data(5);
    assert_eq!(c.data_left(), 7);
    c.skip_data(100);
    assert_eq!(c.data_left(), 0, "never past the chunk's data");
    assert_eq!(c.feed(b"XY"), Err(ChunkError::BadLineEnd));
    let mut c = Chunked::new();
    c.feed(b"3\r\n").unwrap();
    c.skip_data(3);
    assert_eq!(c.feed(b"\r\n0\r\n"), Ok(5));
    assert!(c.in_trailers());
    c.skip_data(1);
    assert!(c.in_trailers(), "outside data: nothing to skip");
}

#[test]
fn hex_sizes_extensions_and_trailers() {
    let body = b"A;name=val;x\r\n0123456789\r\n1f \t;e\r\n0123456789012345678901234567890\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n";
    assert_eq!(scan(body), Ok((body.len(), true)));
    assert_eq!(scan_bytewise(body), Ok((body.len(), true)));
    let upper = b"aB\r\n";
    let mut c = Chunked::new();
    assert_eq!(c.feed(upper), Ok(4));
    assert_eq!(c.state, State::Data(0xab));
}

#[test]
fn partial_input_is_all_body() {
    assert_eq!(scan(b"5\r\nhel"), Ok((6, false)));
    assert_eq!(scan(b"0\r\n"), Ok((3, false)));
    assert_eq!(scan(b"0\r\n\r"), Ok((3, false)));
    assert_eq!(scan(b"0\r\nX: y\r\n"), Ok((3, false)));
}

#[test]
fn rejects_bad_sizes() {
    assert_eq!(scan(b"\r\n"), Err(ChunkError::BadSize));
    assert_eq!(scan(b"-5\r\n"), Err(ChunkError::BadSize));
    assert_eq!(scan(b"0x5\r\n"), Err(ChunkError::BadSize));
    assert_eq!(scan(b"5g\r\n"), Err(ChunkError::BadSize));
    assert_eq!(scan(b"+5\r\n"), Err(ChunkError::BadSize));
    assert_eq!(
        scan(b"fffffffffffffffffff\r\n"),
        Err(ChunkError::SizeOverflow)
    );
}

#[test]
fn rejects_bare_lf_everywhere() {
    assert_eq!(scan(b"5\nhello\r\n"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"5;a\nhello\r\n"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"5\r\r"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"5\r\nhelloX"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"5\r\nhello\rX"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"5\r\nhello\n"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"0\r\n\n"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"0\r\nX: y\n"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"0\r\nX: y\rZ"), Err(ChunkError::BadLineEnd));
    assert_eq!(scan(b"0\r\n\rX"), Err(ChunkError::BadLineEnd));
}

#[test]
fn rejects_control_bytes_and_long_lines() {
    assert_eq!(scan(b"5;a\x00\r\n"), Err(ChunkError::BadExtension));
    let mut long = b"5;".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE));
    assert_eq!(scan(&long), Err(ChunkError::LineTooLong));
    let mut zeros = vec![b'0'; MAX_SIZE_LINE + 1];
    zeros.extend_from_slice(b"\r\n");
    assert_eq!(scan(&zeros), Err(ChunkError::LineTooLong));
    let mut trailers = b"0\r\n".to_vec();
    for _ in 0..2000 {
        trailers.extend_from_slice(b"X-Trailer: 123\r\n");
    }
    assert_eq!(scan(&trailers), Err(ChunkError::TrailersTooLarge));
    let mut many = b"0\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(scan(&many), Err(ChunkError::TrailersTooLarge));
}

#[test]
fn trailers_are_fields_and_ours_are_left_out() {
    assert_eq!(
        forwarded_trailers(b"\r\nNEXT"),
        Ok(Some((2, "\r\n".into())))
    );
    assert_eq!(forwarded_trailers(b""), Ok(None));
    assert_eq!(forwarded_trailers(b"X-Ok: 1\r\n\r"), Ok(None));
    let section = b"X-Ok: 1\r\nX-PV-Role: admin\r\nx_pv_client: me\r\nContent-Length: 5\r\n\
        Transfer_Encoding: chunked\r\nHost: evil\r\nConnection: close\r\nTE: trailers\r\n\
        Keep-Alive: 1\r\nUpgrade: h2c\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=x\r\n\
        X-Real-IP: 6.6.6.6\r\nServer-Timing: db;dur=5\r\n\r\nGET / HTTP/1.1\r\n";
    let end = section.len() - b"GET / HTTP/1.1\r\n".len();
    assert_eq!(
        forwarded_trailers(section),
        Ok(Some((
            end,
            "X-Ok: 1\r\nServer-Timing: db;dur=5\r\n\r\n".into()
        )))
    );
}

#[test]
fn malformed_trailers_are_refused() {
    for bad in [
        &b"no colon\r\n\r\n"[..],
        b"Bad Name: x\r\n\r\n",
        b"X-A: 1\r\n folded\r\n\r\n",
        b": empty\r\n\r\n",
        b"X-A: a\x00b\r\n\r\n",
        b"X-A:\x7fb\r\n\r\n",
    ] {
        assert_eq!(
            forwarded_trailers(bad),
            Err(ChunkError::BadTrailer),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    for bad in [&b"X: 1\nY: 2\r\n\r\n"[..], b"X: 1\rY", b"\n", b"X: 1\r\n\n"] {
        assert_eq!(
            forwarded_trailers(bad),
            Err(ChunkError::BadLineEnd),
            "{bad:?}"
        );
    }
    let big = vec![b'a'; MAX_TRAILERS];
    assert_eq!(forwarded_trailers(&big), Err(ChunkError::TrailersTooLarge));
}

#[test]
fn many_leading_zeros_are_fine() {
    assert_eq!(
        scan(b"0000000000000000000005\r\nhello\r\n0\r\n\r\n"),
        Ok((36, true))
    );
}

#[test]
fn feeding_trailers_or_after_done_consumes_nothing() {
    let mut c = Chunked::new();
    assert_eq!(c.feed(b"0\r\n\r\n"), Ok(3));
    assert!(c.in_trailers());
    assert_eq!(c.feed(b"\r\n"), Ok(0));
    assert_eq!(c.trailers(b"\r\nmore", &mut Vec::new()), Ok(Some(2)));
    assert_eq!(c.feed(b"more"), Ok(0));
    assert!(c.is_done() && !c.in_trailers());
}

/// Sizes past 4 GiB are parsed and counted down in u64 on every
/// target, never through a 32-bit usize: 0x12A05F200 (5,000,000,000)
/// would keep only 705,032,704.
#[test]
fn sizes_past_4_gib_count_down_in_u64() {
    assert_eq!(parse_content_length(b"5000000000"), Some(5_000_000_000));
    let mut c = Chunked::new();
    assert_eq!(c.feed(b"12A05F200\r\n0123456789"), Ok(21));
    assert_eq!(c.data_left(), 4_999_999_990);
    // Exactly a u32's worth, then the rest a truncation would lose.
    c.skip_data(1 << 32);
    assert_eq!(c.data_left(), 705_032_694);
    c.skip_data(705_032_694);
    assert_eq!(c.data_left(), 0);
    assert_eq!(c.feed(b"\r\n0\r\n"), Ok(5));
    assert!(c.in_trailers());
}

#[test]
fn content_length_values() {
    assert_eq!(parse_content_length(b"0"), Some(0));
    assert_eq!(parse_content_length(b"5242880"), Some(5_242_880));
    assert_eq!(parse_content_length(b""), None);
    assert_eq!(parse_content_length(b"+5"), None);
    assert_eq!(parse_content_length(b"-1"), None);
    assert_eq!(parse_content_length(b"5,5"), None);
    assert_eq!(parse_content_length(b" 5"), None);
    assert_eq!(parse_content_length(b"0x10"), None);
    assert_eq!(parse_content_length(b"99999999999999999999"), None);
}

#[test]
fn transfer_encoding_last_coding() {
    let v = |s: &[&'static str]| te_is_chunked(s.iter().map(|x| x.as_bytes()));
    assert!(v(&["chunked"]));
    assert!(v(&["Chunked"]));
    assert!(v(&["gzip, chunked"]));
    assert!(v(&["gzip", "chunked"]));
    assert!(!v(&["chunked, gzip"]));
    assert!(!v(&["chunked", "chunked"]));
    assert!(!v(&["gzip"]));
    assert!(!v(&[""]));
    assert!(!v(&[]));
    assert!(!v(&["chunkedx"]));
}
