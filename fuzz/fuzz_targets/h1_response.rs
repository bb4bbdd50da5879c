//! An upstream's response bytes through `h1::parse_response_head` and the
//! body `Decoder`, as `proxy::direct` reads them: never a panic, a head is
//! split off whole, and the body decodes to the same data, trailers and
//! error whether its bytes come at once or a few at a time (the first
//! input byte picks how many, and whether the request was a HEAD). The
//! same bytes parsed again with the field names the connection remembers
//! from the first time give the same head, and so does a response parsed
//! after another one (the input's first half) as parsed on a fresh
//! connection. Fed `step` bytes at a time and parsed again only where
//! `may_end_head` says the new bytes may end the head (as `proxy::direct`
//! reads), the same head is found.
#![no_main]

use bytes::BytesMut;
use gateway::h1::{
    may_end_head, parse_response_head, Decoder, Framing, H1Error, Head, Names, ResponseHead, Step,
};
use http::{HeaderMap, StatusCode, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let head_request = pick & 1 == 1;
    let mut names = Names::default();
    let first = final_head(data, head_request, &mut names);
    let again = final_head(data, head_request, &mut names);
    assert_eq!(
        first
            .as_ref()
            .map(|(head, rest)| (seen(head), rest.clone())),
        again
            .as_ref()
            .map(|(head, rest)| (seen(head), rest.clone())),
        "parsed again with remembered names"
    );
    let (before, after) = data.split_at(data.len() / 2);
    let mut primed = Names::default();
    let _ = final_head(before, head_request, &mut primed);
    let seen_of =
        |parsed: Option<(ResponseHead, BytesMut)>| parsed.map(|(head, rest)| (seen(&head), rest));
    assert_eq!(
        seen_of(final_head(after, head_request, &mut primed)),
        seen_of(final_head(after, head_request, &mut Names::default())),
        "parsed after another response's names"
    );
    let step = usize::from(pick >> 1).max(1);
    assert_eq!(
        seen_of(final_head(data, head_request, &mut Names::default())),
        seen_of(final_head_stepwise(data, head_request, step)),
        "read {step} bytes at a time"
    );
    let Some((head, buf)) = first else {
        return;
    };
    let body = buf.freeze();
    let whole = decode(head.framing, &body, body.len().max(1));
    assert_eq!(whole, decode(head.framing, &body, step), "step {step}");
});

/// The final head at the start of `data` (informational ones skipped),
/// and the bytes after it.
fn final_head(
    data: &[u8],
    head_request: bool,
    names: &mut Names,
) -> Option<(ResponseHead, BytesMut)> {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match parse_response_head(&mut buf, head_request, names) {
            Ok(Some(Head::Informational)) => assert!(buf.len() < before, "an empty head"),
            Ok(Some(Head::Final(head))) => {
                assert!(buf.len() < before, "an empty head");
                return Some((head, buf));
            }
            _ => return None,
        }
    }
}

/// [`final_head`] as `proxy::direct` reads it: `step` bytes at a time,
/// a head found incomplete parsed again only where [`may_end_head`] says.
fn final_head_stepwise(
    data: &[u8],
    head_request: bool,
    step: usize,
) -> Option<(ResponseHead, BytesMut)> {
    let (mut names, mut buf, mut fed, mut parsed_at) =
        (Names::default(), BytesMut::new(), 0, None::<usize>);
    loop {
        if !buf.is_empty() && parsed_at.is_none_or(|at| may_end_head(&buf, at)) {
            match parse_response_head(&mut buf, head_request, &mut names) {
                Ok(Some(Head::Informational)) => {
                    parsed_at = None;
                    continue;
                }
                Ok(Some(Head::Final(head))) => {
                    buf.extend_from_slice(&data[fed..]);
                    return Some((head, buf));
                }
                Ok(None) => parsed_at = Some(buf.len()),
                Err(_) => return None,
            }
        }
        if fed == data.len() {
            return None;
        }
        let next = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..next]);
        fed = next;
    }
}

/// What a head says, comparable.
fn seen(head: &ResponseHead) -> (StatusCode, Version, HeaderMap, Framing, bool) {
    let response = &head.response;
    let (status, version) = (response.status(), response.version());
    (
        status,
        version,
        response.headers().clone(),
        head.framing,
        head.keep_alive,
    )
}

type Decoded = Result<(Vec<u8>, Option<HeaderMap>), H1Error>;

/// The body `framing` reads from `input` fed `step` bytes at a time, then
/// the end of the connection.
fn decode(framing: Framing, input: &[u8], step: usize) -> Decoded {
    let mut decoder = Decoder::new(framing);
    let (mut buf, mut data, mut trailers, mut fed) = (BytesMut::new(), Vec::new(), None, 0);
    loop {
        match decoder.decode(&mut buf, fed >= input.len())? {
            Step::Data(bytes) => {
                assert!(!bytes.is_empty(), "an empty data frame");
                data.extend_from_slice(&bytes);
            }
            Step::Trailers(map) => trailers = Some(map),
            Step::Done => return Ok((data, trailers)),
            Step::NeedMore => {
                assert!(fed < input.len(), "more asked for after the end");
                let next = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..next]);
                fed = next;
            }
        }
    }
}
