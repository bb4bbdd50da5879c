use bytes::BytesMut;
use http::{Method, Request, StatusCode};

use super::*;

fn parse(text: &[u8], head_request: bool) -> Result<Option<Head>, H1Error> {
    parse_response_head(
        &mut BytesMut::from(text),
        head_request,
        &mut Names::default(),
    )
}

/// The final head of `text`, and the bytes left after it.
fn head(text: &[u8]) -> (ResponseHead, BytesMut) {
    let mut buf = BytesMut::from(text);
    match parse_response_head(&mut buf, false, &mut Names::default()) {
        Ok(Some(Head::Final(head))) => (head, buf),
        other => panic!("{other:?}"),
    }
}

fn framing_of(fields: &str) -> Result<Framing, H1Error> {
    let text = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
    match parse(text.as_bytes(), false)? {
        Some(Head::Final(head)) => Ok(head.framing),
        other => panic!("{other:?}"),
    }
}

/// `method target` with `fields`, its head encoded for a body of `body_len`.
fn encoded(
    method: Method,
    target: &str,
    fields: &[(&'static str, &str)],
    body_len: usize,
) -> Vec<u8> {
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = target.parse().unwrap();
    for (name, value) in fields {
        req.headers_mut().append(*name, value.parse().unwrap());
    }
    let mut out = Vec::new();
    // The gateway's own fields come after the client's, before the length.
    let extra = |out: &mut Vec<u8>| write_field(out, "x-request-id", b"r1");
    encode_request_head(&req, extra, body_len, &mut out);
    out
}

#[test]
fn the_request_head_is_origin_form_with_its_fields_and_no_transfer_encoding() {
    let fields = [
        ("host", "api"),
        ("x-two", "1"),
        ("x-two", "2"),
        ("transfer-encoding", "chunked"),
    ];
    assert_eq!(
        encoded(Method::DELETE, "/a/b?c=d", &fields, 0),
        b"DELETE /a/b?c=d HTTP/1.1\r\nhost: api\r\nx-two: 1\r\nx-two: 2\r\nx-request-id: r1\r\n\r\n"
    );
}

#[test]
fn a_body_read_whole_is_framed_by_its_own_length_only_and_expects_nothing() {
    let fields = [
        ("content-length", "999"),
        ("transfer-encoding", "chunked"),
        ("x-a", "b"),
        ("expect", "100-continue"),
    ];
    assert_eq!(
        encoded(Method::POST, "/in", &fields, 5),
        b"POST /in HTTP/1.1\r\nx-a: b\r\nx-request-id: r1\r\ncontent-length: 5\r\n\r\n"
    );
}

#[test]
fn an_own_reason_phrase_is_kept_a_standard_one_is_not() {
    let text = b"HTTP/1.1 499 Client Closed Request\r\ncontent-length: 0\r\n\r\n";
    let reason = head(text)
        .0
        .response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .cloned();
    assert_eq!(
        reason.as_ref().map(|r| r.as_bytes()),
        Some(&b"Client Closed Request"[..])
    );
    let standard = head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").0;
    assert!(standard
        .response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .is_none());
}

#[test]
fn a_head_is_split_off_and_its_values_share_the_buffer() {
    let (head, rest) = head(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-A: b\r\n\r\nbody");
    assert_eq!(head.response.status(), StatusCode::CREATED);
    assert_eq!(head.response.headers()["x-a"], "b");
    assert_eq!(head.framing, Framing::Length(4));
    assert!(head.keep_alive);
    assert_eq!(&rest[..], b"body");
}

#[test]
fn partial_oversized_and_overfull_heads() {
    assert!(matches!(
        parse(b"HTTP/1.1 200 OK\r\nx: y\r\n", false),
        Ok(None)
    ));
    assert!(matches!(parse(b"", false), Ok(None)));
    let big = [
        b"HTTP/1.1 200 OK\r\nx: ".as_slice(),
        &vec![b'a'; MAX_HEAD_BYTES],
    ]
    .concat();
    assert_eq!(parse(&big, false).unwrap_err(), H1Error::HeadTooLarge);
    // Complete in one read, the same limit.
    let whole = [big.as_slice(), b"\r\n\r\n"].concat();
    assert_eq!(parse(&whole, false).unwrap_err(), H1Error::HeadTooLarge);
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: 1\r\n")).collect();
    let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(
        parse(text.as_bytes(), false).unwrap_err(),
        H1Error::TooManyHeaders
    );
    assert!(matches!(
        parse(b"HTTP/1.1 2000 OK\r\n\r\n", false),
        Err(H1Error::Malformed(_))
    ));
    assert!(matches!(
        parse(b"HTTP/1.1 200 OK\r\nbad name: 1\r\n\r\n", false),
        Err(H1Error::Malformed(_))
    ));
}

#[test]
fn informational_heads_are_skipped_and_an_unasked_101_refused() {
    let mut buf =
        BytesMut::from(&b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"[..]);
    assert!(matches!(
        parse_response_head(&mut buf, false, &mut Names::default()),
        Ok(Some(Head::Informational))
    ));
    assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    assert_eq!(
        parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).unwrap_err(),
        H1Error::UnsolicitedSwitch
    );
}

#[test]
fn lengths_must_be_plain_digits_and_agree() {
    assert_eq!(framing_of("content-length: 5\r\n"), Ok(Framing::Length(5)));
    assert_eq!(
        framing_of("content-length: 5, 5\r\ncontent-length: 5\r\n"),
        Ok(Framing::Length(5))
    );
    for bad in ["+5", "-1", "0x5", "5 5", "", "5,", "18446744073709551616"] {
        let fields = format!("content-length: {bad}\r\n");
        assert!(
            matches!(framing_of(&fields), Err(H1Error::Framing(_))),
            "{bad:?}"
        );
    }
    let conflicting = framing_of("content-length: 5\r\ncontent-length: 6\r\n");
    assert!(matches!(conflicting, Err(H1Error::Framing(_))));
    assert_eq!(framing_of(""), Ok(Framing::Close));
}

#[test]
fn transfer_encoding_is_chunked_last_or_read_to_the_close() {
    assert_eq!(
        framing_of("transfer-encoding: chunked\r\n"),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        framing_of("transfer-encoding: gzip, CHUNKED\r\n"),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        framing_of("transfer-encoding: gzip\r\n"),
        Ok(Framing::Close)
    );
    for bad in [
        "transfer-encoding: chunked, gzip\r\n",
        "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 3\r\n",
    ] {
        assert!(
            matches!(framing_of(bad), Err(H1Error::Framing(_))),
            "{bad:?}"
        );
    }
    let old = parse(
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        false,
    );
    assert!(matches!(old, Err(H1Error::Framing(_))));
}

#[test]
fn no_body_after_head_204_and_304_and_who_may_keep_the_connection() {
    let text = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n";
    match parse(text, true) {
        Ok(Some(Head::Final(head))) => assert_eq!(head.framing, Framing::Empty),
        other => panic!("{other:?}"),
    }
    for status in ["204 No Content", "304 Not Modified"] {
        let text = format!("HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(head(text.as_bytes()).0.framing, Framing::Empty);
    }
    let keep = |text: &[u8]| head(text).0.keep_alive;
    assert!(keep(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(!keep(
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"
    ));
    assert!(!keep(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(!keep(b"HTTP/1.1 200 OK\r\n\r\n"));
}

/// `Connection` saying only `close` or `keep-alive` (any case, any
/// number of fields) is read for keep-alive and left out of the response;
/// one naming another field stays, with that field, for the relay's
/// hop-by-hop removal. The other fields stay as they came.
#[test]
fn connection_is_read_and_left_out_unless_it_names_fields() {
    let fields = |text: &[u8]| {
        let (head, _) = head(text);
        let names: Vec<String> = (head.response.headers().iter())
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
            .collect();
        (names, head.keep_alive)
    };
    let (names, keep) = fields(
        b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\nconnection: ,\r\n\r\n",
    );
    assert_eq!(names, ["server: up", "content-length: 0"]);
    assert!(keep);
    let (names, keep) =
        fields(b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nconnection: CLOSE\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(names, ["content-length: 0"]);
    assert!(!keep);
    let (names, keep) = fields(
        b"HTTP/1.1 200 OK\r\nconnection: close, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n",
    );
    assert_eq!(
        names,
        ["connection: close, x-hop", "x-hop: 1", "content-length: 0"]
    );
    assert!(!keep);
}

/// Body bytes, trailers, and what was left in the buffer.
type Decoded = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

/// Everything `decoder` yields from `input` fed `step` bytes at a time,
/// then the end of the connection.
fn decode_all(framing: Framing, input: &[u8], step: usize) -> Result<Decoded, H1Error> {
    let mut decoder = Decoder::new(framing);
    let (mut buf, mut data, mut trailers) = (BytesMut::new(), Vec::new(), None);
    let mut fed = 0;
    loop {
        let eof = fed >= input.len();
        match decoder.decode(&mut buf, eof)? {
            Step::Data(bytes) => data.extend_from_slice(&bytes),
            Step::Trailers(map) => trailers = Some(map),
            Step::Done => return Ok((data, trailers, buf.to_vec())),
            Step::NeedMore => {
                let next = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..next]);
                fed = next;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_the_same_whole_or_byte_by_byte() {
    let input = b"4;name=\"v\"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-sum: 9\r\n\r\nNEXT";
    for step in [1, 2, 7, input.len()] {
        let (data, trailers, rest) = decode_all(Framing::Chunked, input, step).unwrap();
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
        assert_eq!(trailers.unwrap()["x-sum"], "9");
        assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
    }
    let (data, trailers, _) = decode_all(Framing::Chunked, b"1\r\na\r\n0\r\n\r\n", 1).unwrap();
    assert_eq!((data.as_slice(), trailers), (b"a".as_slice(), None));
}

#[test]
fn malformed_or_cut_chunked_bodies_are_errors() {
    for (input, what) in [
        (&b"zz\r\nab\r\n0\r\n\r\n"[..], "size"),
        (b"2\r\nabXY0\r\n\r\n", "crlf"),
        (b"2\r\nab", "cut in data"),
        (b"2\r\nab\r\n", "cut before the last chunk"),
        (b"0\r\nx-a: 1\r\n", "cut in trailers"),
        (b"ffffffffffffffffff\r\n", "overflow"),
        (b"0\r\nbad trailer\r\n\r\n", "trailer"),
    ] {
        for step in [1, 64] {
            assert!(
                decode_all(Framing::Chunked, input, step).is_err(),
                "{what} (step {step})"
            );
        }
    }
    // The line limit holds for a whole line too, not only a partial one.
    let long_line = [b"1;".as_slice(), &[b'x'; 5000], b"\r\na\r\n0\r\n\r\n"].concat();
    for step in [1, long_line.len()] {
        let error = decode_all(Framing::Chunked, &long_line, step).unwrap_err();
        assert_eq!(
            error,
            H1Error::Chunked("chunk-size line too long"),
            "step {step}"
        );
    }
}

/// What hyper refuses in a chunk-size line, refused here too: a line
/// without a digit would end the body early and leave the rest of it to
/// answer the next request on the connection.
#[test]
fn chunk_size_lines_need_a_digit_crlf_and_bounded_extensions() {
    for input in [
        &b"1\r\nZ\r\n\r\n\r\n"[..],
        b" \r\n\r\n",
        b";x\r\n\r\n",
        b"1;a\nb\r\nZ\r\n0\r\n\r\n",
    ] {
        for step in [1, input.len()] {
            let result = decode_all(Framing::Chunked, input, step);
            assert!(
                matches!(result, Err(H1Error::Chunked(_))),
                "{input:?}: {result:?}"
            );
        }
    }
    let chunk = [b"1;".as_slice(), &[b'e'; 1000], b"\r\nZ\r\n"].concat();
    let many = [chunk.repeat(17), b"0\r\n\r\n".to_vec()].concat();
    let error = decode_all(Framing::Chunked, &many, 4096).unwrap_err();
    assert_eq!(error, H1Error::Chunked("chunk extensions too large"));
    let fewer = [chunk.repeat(15), b"0\r\n\r\n".to_vec()].concat();
    let (data, _, _) = decode_all(Framing::Chunked, &fewer, 7).unwrap();
    assert_eq!(data, b"Z".repeat(15));
}

#[test]
fn trailers_are_crlf_only_and_bounded() {
    let bare = b"0\r\nx-a: 1\n\nx-b: 2\r\n\r\n";
    assert!(decode_all(Framing::Chunked, bare, 64).is_err());
    let big: String = (0..2000).map(|i| format!("x-{i}: 1\r\n")).collect();
    let big = format!("0\r\n{big}\r\n");
    assert!(decode_all(Framing::Chunked, big.as_bytes(), 100_000).is_err());
    let many: String = (0..40).map(|i| format!("x-{i}: 1\r\n")).collect();
    let many = format!("0\r\n{many}\r\n");
    assert!(decode_all(Framing::Chunked, many.as_bytes(), 100_000).is_err());
}

#[test]
fn lengths_and_closes_end_where_they_say() {
    let (data, _, rest) = decode_all(Framing::Length(3), b"abcdef", 2).unwrap();
    assert_eq!(
        (data.as_slice(), rest.len() <= 3),
        (b"abc".as_slice(), true)
    );
    assert_eq!(
        decode_all(Framing::Length(9), b"abc", 1).unwrap_err(),
        H1Error::Incomplete
    );
    let (data, _, _) = decode_all(Framing::Close, b"to the end", 3).unwrap();
    assert_eq!(data, b"to the end");
    let (data, _, _) = decode_all(Framing::Empty, b"ignored", 3).unwrap();
    assert!(data.is_empty());
    let decoder = Decoder::new(Framing::Length(7));
    assert_eq!(decoder.remaining(), Some(7));
    assert_eq!(Decoder::new(Framing::Chunked).remaining(), None);
}

/// A head found incomplete is looked at again whenever the bytes since
/// complete it, wherever the reads split it: for every prefix that does
/// not parse and every longer one that does, `may_end_head` says so.
#[test]
fn a_head_that_completes_is_always_parsed_again() {
    for text in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 204 No Content\n\n",
        b"HTTP/1.1 200 OK\nx: 1\r\n\nbody",
        b"HTTP/1.1 200 OK\r\nx: 1\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    ] {
        let complete = |len: usize| !matches!(parse(&text[..len], false), Ok(None));
        for parsed_at in (1..text.len()).filter(|&at| !complete(at)) {
            for len in (parsed_at + 1..=text.len()).filter(|&len| complete(len)) {
                assert!(
                    may_end_head(&text[..len], parsed_at),
                    "{:?} after {parsed_at}",
                    String::from_utf8_lossy(&text[..len])
                );
            }
        }
    }
    // Lines that do not end the head wait for more, until the limit.
    let fields = b"HTTP/1.1 200 OK\r\nx: 1\r\ny: 2\r\n";
    assert!(!may_end_head(fields, 20));
    assert!(!may_end_head(&[b'x'; MAX_HEAD_BYTES], 10));
    assert!(may_end_head(&[b'x'; MAX_HEAD_BYTES + 1], 10));
}

/// What the direct path writes raw is what the header map would take.
#[test]
fn valid_value_is_https_own_check() {
    let mut texts: Vec<String> = (0..=127u8).map(|b| format!("a{}z", b as char)).collect();
    texts.extend(["é", "\u{80}", "\u{ff}", "日本", "a\r\nb", ""].map(String::from));
    for text in &texts {
        assert_eq!(
            valid_value(text),
            http::HeaderValue::from_str(text).is_ok(),
            "{text:?}"
        );
    }
}

#[test]
fn only_chunked_is_a_transfer_coding_the_gateway_relays() {
    let coded = |fields: &str| {
        let text = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        foreign_transfer_coding(head(text.as_bytes()).0.response.headers())
    };
    assert!(!coded("content-length: 0\r\n"));
    assert!(!coded("transfer-encoding: chunked\r\n"));
    assert!(!coded("transfer-encoding: Chunked\r\n"));
    for fields in [
        "transfer-encoding: gzip\r\n",
        "transfer-encoding: gzip, chunked\r\n",
        "transfer-encoding: deflate\r\ntransfer-encoding: chunked\r\n",
    ] {
        assert!(coded(fields), "{fields:?}");
    }
}
