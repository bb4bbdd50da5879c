//! The XDP program's packet parser on the host: `gateway_common::packet::parse`
//! over a byte slice (the kernel runs the same code over the XDP context).
#![no_main]

use gateway_common::packet::{parse, Bytes, Truncated};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outcome = parse(&Bytes(data));
    // The verdict depends only on bytes the parser read: trailing bytes
    // change no answer it could give...
    if outcome.is_ok() {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0xa5; 64]);
        assert_eq!(
            parse(&Bytes(&longer)),
            outcome,
            "trailing bytes changed the flow"
        );
    }
    // ...and a cut packet gives the same answer or `Truncated`, never
    // another flow.
    if let Some(&last) = data.last() {
        let cut = usize::from(last) % data.len();
        let short = parse(&Bytes(&data[..cut]));
        assert!(
            short == outcome || short == Err(Truncated),
            "cut at {cut}: {short:?} vs {outcome:?}"
        );
    }
});
