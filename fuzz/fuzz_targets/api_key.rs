//! API keys as the request path sees them: `keys::format::parse` (shape and
//! checksum) and `KeyIndex::verify` on an empty index (no store needed).
#![no_main]

use gateway::keys::{
    format::{self, KeyFormatError},
    KeyIndex, KeyRejection,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Header values reach the key check only as UTF-8 text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = format::parse(text);
    let (key_id, outcome) = KeyIndex::default().verify(text, 0);
    match parsed {
        Ok(key) => {
            // Only a well-formed key reaches the lookup, and an empty index
            // knows none.
            assert_eq!(text.len(), format::KEY_LEN);
            assert_eq!(key_id.as_deref(), Some(key.id));
            assert_eq!(outcome.err(), Some(KeyRejection::Unknown));
            // CRC-32 catches every single-character change.
            let position = usize::from(data[0]) % text.len();
            let mut changed = text.as_bytes().to_vec();
            changed[position] = if changed[position] == b'a' {
                b'b'
            } else {
                b'a'
            };
            if let Ok(changed) = std::str::from_utf8(&changed) {
                assert!(format::parse(changed).is_err(), "a changed key parsed");
            }
        }
        Err(KeyFormatError::Checksum) => {
            assert_eq!(key_id, None);
            assert_eq!(outcome.err(), Some(KeyRejection::Checksum));
        }
        Err(_) => {
            assert_eq!(key_id, None);
            assert_eq!(outcome.err(), Some(KeyRejection::Malformed));
        }
    }
});
