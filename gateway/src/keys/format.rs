//! The API key format: `gk_<id>_<secret><check>`, all base62.
//!
//! - `gk_` lets secret scanners and operators recognise a leaked key;
//! - `<id>` (12 chars) finds the record without touching the secret, and is
//!   what logs show;
//! - `<secret>` (43 chars, 256 bits from the OS CSPRNG) is stored only as a
//!   SHA-256 hash (a 256-bit random secret needs no slow hash);
//! - `<check>` (6 chars) is a CRC-32 of everything before it, so garbage is
//!   rejected before any lookup.
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "gk_";
pub const ID_LEN: usize = 12;
pub const SECRET_LEN: usize = 43;
const CHECK_LEN: usize = 6;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Longest string we even look at (a key is exactly this long).
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN + CHECK_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFormatError {
    #[error("not a gateway API key (expected gk_<id>_<secret>)")]
    Malformed,
    #[error("API key checksum does not match (mistyped or truncated key)")]
    Checksum,
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

/// A key split into its parts; `secret` never leaves this process unhashed.
pub struct ParsedKey<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// A key id as logs show it, inline: verifying a key allocates nothing
/// to name it. Holds at most [`ID_LEN`] bytes; longer text (never a key
/// id: `parse` checks its length) is cut at a char boundary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyIdText {
    bytes: [u8; ID_LEN],
    len: u8,
}

impl From<&str> for KeyIdText {
    fn from(text: &str) -> Self {
        let mut len = text.len().min(ID_LEN);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; ID_LEN];
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }
}

impl std::ops::Deref for KeyIdText {
    type Target = str;

    fn deref(&self) -> &str {
        // Always whole chars of a `str` (see `from`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for KeyIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for KeyIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// A freshly generated key: the full text (shown once) and what to store.
pub struct NewKey {
    pub id: String,
    pub text: String,
    pub secret_hash: [u8; 32],
}

fn random_base62(len: usize) -> Result<String, KeyFormatError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| KeyFormatError::Random(e.to_string()))?;
        // Rejection sampling keeps every character equally likely.
        for &byte in &buf {
            if byte < 248 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(byte % 62)]));
            }
        }
    }
    Ok(out)
}

/// The check digits of `body`, on the stack: parsing a presented key
/// allocates nothing.
fn check_bytes(body: &str) -> [u8; CHECK_LEN] {
    let mut value = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECK_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    digits
}

pub(crate) fn check_digits(body: &str) -> String {
    check_bytes(body).iter().map(|&b| char::from(b)).collect()
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new key with a random id and secret.
pub fn generate() -> Result<NewKey, KeyFormatError> {
    let id = random_base62(ID_LEN)?;
    let secret = random_base62(SECRET_LEN)?;
    let body = format!("{PREFIX}{id}_{secret}");
    let text = format!("{body}{}", check_digits(&body));
    Ok(NewKey {
        secret_hash: hash_secret(&secret),
        id,
        text,
    })
}

/// Whether every byte is base62 (an ASCII letter or digit). No early
/// exit, so the loop vectorises: it runs on every presented key.
fn all_base62(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        ok & (b.is_ascii_digit() | ((b | 0x20).wrapping_sub(b'a') < 26))
    })
}

/// Checks shape and checksum; no store lookup.
pub fn parse(text: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    let bytes = text.as_bytes();
    let separator = PREFIX.len() + ID_LEN;
    if bytes.len() != KEY_LEN
        || !bytes.starts_with(PREFIX.as_bytes())
        || bytes[separator] != b'_'
        || !all_base62(&bytes[PREFIX.len()..separator])
        || !all_base62(&bytes[separator + 1..])
    {
        return Err(KeyFormatError::Malformed);
    }
    // All ASCII from here on, so every split below is on a char boundary.
    let rest = text.get(PREFIX.len()..).ok_or(KeyFormatError::Malformed)?;
    let (id, rest) = rest.split_at(ID_LEN);
    let (secret, check) = rest[1..].split_at(SECRET_LEN);
    if check_bytes(&text[..text.len() - CHECK_LEN]) != check.as_bytes() {
        return Err(KeyFormatError::Checksum);
    }
    Ok(ParsedKey { id, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_their_secret() {
        let key = generate().unwrap();
        assert_eq!(key.text.len(), KEY_LEN);
        assert!(key.text.starts_with("gk_"));
        let parsed = parse(&key.text).unwrap();
        assert_eq!(parsed.id, key.id);
        assert_eq!(hash_secret(parsed.secret), key.secret_hash);
        assert_ne!(generate().unwrap().text, key.text);
    }

    #[test]
    fn any_changed_character_fails_the_checksum() {
        let key = generate().unwrap().text;
        let mut bytes = key.into_bytes();
        let i = PREFIX.len() + ID_LEN + 5;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(parse(&tampered).err(), Some(KeyFormatError::Checksum));
    }

    #[test]
    fn a_key_id_text_holds_whole_chars_of_at_most_an_id() {
        let key = generate().unwrap();
        assert_eq!(&*KeyIdText::from(key.id.as_str()), key.id);
        assert_eq!(&*KeyIdText::from("kid\"1"), "kid\"1");
        assert_eq!(&*KeyIdText::from("abcdefghijklmnop"), "abcdefghijkl");
        assert_eq!(&*KeyIdText::from("abcdefghijk\u{e9}"), "abcdefghijk");
    }

    #[test]
    fn garbage_is_malformed() {
        for text in ["", "gk_", "Bearer x", &"a".repeat(KEY_LEN), "gk_é"] {
            assert_eq!(parse(text).err(), Some(KeyFormatError::Malformed), "{text}");
        }
        // A valid key with one character swapped for each non-base62 byte
        // that borders the ranges (and one multi-byte char, same length).
        let key = generate().unwrap().text;
        for at in [PREFIX.len(), PREFIX.len() + ID_LEN + 1, KEY_LEN - 1] {
            for bad in ["/", ":", "@", "[", "`", "{", "_", "-", "\u{7f}", " "] {
                let mut text = key.clone();
                text.replace_range(at..at + 1, bad);
                assert_eq!(
                    parse(&text).err(),
                    Some(KeyFormatError::Malformed),
                    "{text}"
                );
            }
        }
        let mut text = key.clone();
        text.replace_range(PREFIX.len() + ID_LEN..PREFIX.len() + ID_LEN + 1, "a");
        assert_eq!(parse(&text).err(), Some(KeyFormatError::Malformed));
        let mut text = key.clone();
        text.replace_range(PREFIX.len()..PREFIX.len() + 2, "é");
        assert_eq!(parse(&text).err(), Some(KeyFormatError::Malformed));
    }
}
