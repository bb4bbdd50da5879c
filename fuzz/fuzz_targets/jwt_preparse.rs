//! What a bearer token meets before any crypto: `jwt::looks_like_jwt` (size
//! and shape) and `jwt::decode_unverified` (header and claims decode), the
//! first two steps of `JwtVerifier::verify`.
#![no_main]

use gateway::jwt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let shaped = jwt::looks_like_jwt(token);
    if shaped {
        assert!(token.len() <= jwt::MAX_TOKEN_BYTES);
    }
    // Decoded for every input, not only shaped ones: the decoder must not
    // rely on the shape check to stay panic-free.
    if let Ok((header, claims)) = jwt::decode_unverified(token) {
        let _ = (header.kid.as_deref(), claims.get("iss"));
    }
});
