use super::*;

#[test]
fn a_refused_heads_method_and_target_are_its_first_words() {
    let w = |h: &[u8]| request_line(h);
    assert_eq!(
        w(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("GET".into(), "/a?b=c".into())
    );
    // Cut short (a head timeout), or one word only.
    assert_eq!(w(b"POST /up"), ("POST".into(), "/up".into()));
    assert_eq!(w(b"GARBAGE\r\n\r\n"), ("GARBAGE".into(), String::new()));
    assert_eq!(w(b"\r\n"), (String::new(), String::new()));
    // Not UTF-8: shown, not refused (the line escapes what it must).
    assert_eq!(w(b"GET /\xff HTTP/1.1"), ("GET".into(), "/\u{fffd}".into()));
    // Only the start of a huge head is looked at.
    let mut big = b"GET /".to_vec();
    big.resize(1 << 20, b'a');
    assert!(w(&big).1.len() <= MAX_PATH + MAX_VALUE + 2);
}

#[test]
fn times_add_up_across_holds_and_retries() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let what = Some(("GET".to_string(), "/".to_string()));
    let mut r = Record::new(None, t0, 10, what.clone());
    // Dial at 10, held 20..70, connected at 80; a retry dials 100..110.
    r.dialling(at(10));
    r.held(false, at(15));
    r.held(true, at(20));
    r.held(true, at(50));
    r.held(false, at(70));
    r.dialled(at(80));
    // Sent at 90, the attempt fails at 95 (no first byte): 5 ms waited.
    r.waited(Some(at(90)), at(95), false);
    r.dialling(at(100));
    r.dialled(at(110));
    // Sent again at 120, first byte at 150; nothing more counts after.
    r.waited(Some(at(120)), at(150), true);
    let d = r.detail.as_deref_mut().expect("kept while the log is on");
    d.close(Some(at(120)), at(200));
    assert_eq!(d.connect, Duration::from_millis(80));
    assert_eq!(d.held, Duration::from_millis(50));
    assert_eq!(d.wait, Duration::from_millis(35));
    // A request that ends while held: the hold and the dial end with it.
    let mut r = Record::new(None, t0, 10, what);
    r.dialling(at(0));
    r.held(true, at(5));
    let d = r.detail.as_deref_mut().expect("kept while the log is on");
    d.close(None, at(40));
    assert_eq!(
        (d.held, d.connect),
        (Duration::from_millis(35), Duration::from_millis(40))
    );
    // The log off: nothing kept, nothing to keep time for.
    let mut r = Record::new(None, t0, 10, None);
    r.dialling(at(0));
    r.held(true, at(5));
    assert!(r.detail.is_none());
}

#[test]
fn every_cause_ends_as_the_metrics_say() {
    // 4xx of the client's making are refusals, timeouts are ours.
    assert_eq!(Cause::NoRoute.end(), End::Refused);
    assert_eq!(Cause::HeadTimeout.end(), End::Timeout);
    assert_eq!(Cause::Unreachable.end(), End::BackendFailed);
    assert_eq!(Cause::BadResponse.end(), End::BackendReset);
    assert_eq!(Cause::ClientGone.end().as_str(), Cause::ClientGone.as_str());
    assert_eq!(Cause::Drained.end().as_str(), Cause::Drained.as_str());
}
