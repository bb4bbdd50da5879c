//! Finding the API key in a request, in the brief's precedence: headers (in
//! configured order), then the query parameter, then the cookie.
use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::config::KeySources;

/// Upper bound on what we even look at: no key is longer.
const MAX_CREDENTIAL: usize = 512;

/// Where a credential was found (logged; the value never is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location<'s> {
    Header(&'s str),
    Query(&'s str),
    Cookie(&'s str),
}

/// Borrowed from the request and the route: finding a key copies nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Credential<'r> {
    pub value: &'r str,
    pub location: Location<'r>,
}

/// `Bearer <key>` or `apk <key>` (scheme case-insensitive); other headers
/// may also carry the bare key.
fn from_header<'v>(name: &str, value: &'v HeaderValue) -> Option<&'v str> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || text.len() > MAX_CREDENTIAL {
        return None;
    }
    // The schemes matched at the start: searching a bare key for a space
    // that is not there cost ~200 instructions a request.
    let scheme_value = ["bearer ", "apk "].iter().find_map(|scheme| {
        let head = text.as_bytes().get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme.as_bytes())
            .then(|| text.get(scheme.len()..))
            .flatten()
            .map(str::trim)
    });
    match scheme_value {
        Some(value) if !value.is_empty() => Some(value),
        Some(_) => None,
        // Authorization always names a scheme; other headers may not.
        None if name.eq_ignore_ascii_case(header::AUTHORIZATION.as_str()) => None,
        None => Some(text),
    }
}

/// A JWT in `Authorization: Bearer <jwt>` (API keys there do not match:
/// they have no dots).
pub fn bearer_jwt(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && crate::jwt::looks_like_jwt(token)).then_some(token)
}

/// The value of `name` in a query string (keys are base62: no decoding).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The header names of `sources` (a name that is none matches nothing).
pub fn header_names(sources: &KeySources) -> Vec<HeaderName> {
    (sources.headers.iter())
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// The credential in a request: `key_headers` are `sources.headers` as
/// [`header_names`] parses them.
pub fn extract<'r>(
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    sources: &'r KeySources,
    key_headers: &'r [HeaderName],
) -> Option<Credential<'r>> {
    for name in key_headers {
        if let Some(value) = (headers.get(name)).and_then(|v| from_header(name.as_str(), v)) {
            return Some(Credential {
                value,
                location: Location::Header(name.as_str()),
            });
        }
    }
    if let (Some(name), Some(query)) = (&sources.query, query) {
        if let Some(value) =
            query_value(query, name).filter(|v| !v.is_empty() && v.len() <= MAX_CREDENTIAL)
        {
            return Some(Credential {
                value,
                location: Location::Query(name),
            });
        }
    }
    if let Some(name) = &sources.cookie {
        if let Some(value) =
            cookie_value(headers, name).filter(|v| !v.is_empty() && v.len() <= MAX_CREDENTIAL)
        {
            return Some(Credential {
                value,
                location: Location::Cookie(name),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn found(h: &[(&str, &str)], query: Option<&str>) -> Option<(String, Location<'static>)> {
        let sources = KeySources::default();
        let location = |l: Location<'_>| match l {
            Location::Header(n) => Location::Header(n.to_owned().leak()),
            Location::Query(n) => Location::Query(n.to_owned().leak()),
            Location::Cookie(n) => Location::Cookie(n.to_owned().leak()),
        };
        let names = header_names(&sources);
        extract(&headers(h), query, &sources, &names)
            .map(|c| (c.value.to_owned(), location(c.location)))
    }

    #[test]
    fn header_forms() {
        let auth = Location::Header("authorization");
        assert_eq!(
            found(&[("authorization", "Bearer k1")], None),
            Some(("k1".into(), auth.clone()))
        );
        assert_eq!(
            found(&[("authorization", "apk k2")], None),
            Some(("k2".into(), auth))
        );
        assert_eq!(
            found(&[("api-key", "Bearer k3")], None),
            Some(("k3".into(), Location::Header("api-key")))
        );
        assert_eq!(
            found(&[("x-api-key", "k4")], None),
            Some(("k4".into(), Location::Header("x-api-key")))
        );
        // Basic auth is not ours: fall through to the next source.
        assert_eq!(
            found(&[("authorization", "Basic abc"), ("x-api-key", "k5")], None).map(|f| f.0),
            Some("k5".into())
        );
    }

    /// The scheme is the text before the first space, as a split there
    /// (the matcher before this one) read it.
    #[test]
    fn schemes_read_as_a_split_at_the_first_space_read_them() {
        fn split(name: &str, text: &str) -> Option<String> {
            let scheme_value = text.split_once(' ').and_then(|(scheme, rest)| {
                (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apk"))
                    .then(|| rest.trim())
            });
            match scheme_value {
                Some("") => None,
                Some(value) => Some(value.into()),
                None if name == "authorization" => None,
                None => Some(text.into()),
            }
        }
        for name in ["authorization", "x-api-key"] {
            for text in [
                "Bearer k",
                "bearer  k",
                "BEARER k ",
                "apk k",
                "ApK\tk",
                "apkx k",
                "Bearerk",
                "Bearer",
                "apk",
                "x y",
                "k",
                "Bearer\tk",
                "Bearer k l",
                "bearer- k",
                "\u{e9} k",
                "apk  ",
                "b k",
                " apk k",
            ] {
                let value = HeaderValue::from_bytes(text.as_bytes()).unwrap();
                let split = (value.to_str().ok()).and_then(|text| split(name, text.trim()));
                let found = from_header(name, &value).map(str::to_owned);
                assert_eq!(found, split, "{name}: {text:?}");
            }
        }
    }

    #[test]
    fn precedence_is_header_then_query_then_cookie() {
        let cookie = [("cookie", "a=1; api_key=c1")];
        assert_eq!(found(&cookie, None).unwrap().1, Location::Cookie("api_key"));
        assert_eq!(found(&cookie, Some("x=1&api_key=q1")).unwrap().0, "q1");
        let all = [("cookie", "api_key=c1"), ("x-api-key", "h1")];
        assert_eq!(found(&all, Some("api_key=q1")).unwrap().0, "h1");
        assert_eq!(found(&[], Some("api_key=")), None);
    }
}
