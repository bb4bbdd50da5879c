//! The XDP program's packet parser on the host: `gateway_common::packet::parse`
//! over a byte slice (the kernel runs the same code over the XDP context).
#![no_main]

use gateway_common::packet::{parse, parse_plain_tcp, too_many_vlan_tags, Bytes, L4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outcome = parse(&Bytes(data));
    // The XDP program's straight-line parse of the common shape agrees.
    if let Some(plain) = parse_plain_tcp(&Bytes(data)) {
        assert_eq!(Some(plain), outcome, "the plain-TCP parse disagrees");
    }
    // The program drops what has more VLAN tags than the parser reads;
    // never a frame the parser found an IP header in.
    assert!(
        outcome.is_none() || !too_many_vlan_tags(&Bytes(data)),
        "an IP header behind a third VLAN tag"
    );
    // Trailing bytes never change the source or where the headers are, and
    // change nothing else unless the parser had run out of bytes.
    let mut longer = data.to_vec();
    longer.extend_from_slice(&[0xa5; 64]);
    let long = parse(&Bytes(&longer));
    match (outcome, long) {
        (Some(short), Some(long)) if short.kind == L4::Truncated => {
            assert_eq!((short.src, short.l3), (long.src, long.l3), "source moved");
        }
        (Some(_), _) => assert_eq!(long, outcome, "trailing bytes changed the answer"),
        (None, _) => {}
    }
    // A cut packet gives the same answer, the same source with its ports
    // unknown, or no IP header: never another source.
    if let Some(&last) = data.last() {
        let cut = usize::from(last) % data.len();
        let short = parse(&Bytes(&data[..cut]));
        if let (Some(short), Some(whole)) = (short, outcome) {
            assert!(
                short == whole || (short.kind == L4::Truncated && short.src == whole.src),
                "cut at {cut}: {short:?} vs {whole:?}"
            );
        }
        assert!(
            short.is_none() || outcome.is_some(),
            "cut at {cut}: an IP header appeared"
        );
    }
});
