//! What a bearer token meets before any crypto: `jwt::looks_like_jwt` (size
//! and shape) and `jwt::preparse` (strict base64url segments, header with a
//! known `alg` and no `crit`, claims an object), the first steps of
//! `JwtVerifier::verify`.
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
    if let Ok(preparsed) = jwt::preparse(token) {
        assert!(shaped, "preparse accepted what the shape check refuses");
        assert!(preparsed.claims.is_object());
        let _ = (preparsed.header.kid.as_deref(), preparsed.claims.get("iss"));
    }
});
