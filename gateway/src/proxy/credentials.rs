//! Finding the API key in a request, in the brief's precedence: headers (in
//! configured order), then the query parameter, then the cookie.
use http::{header, HeaderMap, HeaderValue};

use crate::config::KeySources;

/// Upper bound on what we even look at: no key is longer.
const MAX_CREDENTIAL: usize = 512;

/// Where a credential was found (logged; the value never is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Header(String),
    Query(String),
    Cookie(String),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Credential {
    pub value: String,
    pub location: Location,
}

/// `Bearer <key>` or `apk <key>` (scheme case-insensitive); other headers
/// may also carry the bare key.
fn from_header(name: &str, value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || text.len() > MAX_CREDENTIAL {
        return None;
    }
    let scheme_value = text.split_once(' ').and_then(|(scheme, rest)| {
        (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apk"))
            .then(|| rest.trim())
    });
    match scheme_value {
        Some(value) if !value.is_empty() => Some(value.to_owned()),
        Some(_) => None,
        // Authorization always names a scheme; other headers may not.
        None if name.eq_ignore_ascii_case(header::AUTHORIZATION.as_str()) => None,
        None => Some(text.to_owned()),
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

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

pub fn extract(
    headers: &HeaderMap,
    query: Option<&str>,
    sources: &KeySources,
) -> Option<Credential> {
    for name in &sources.headers {
        if let Some(value) = headers
            .get(name.as_str())
            .and_then(|v| from_header(name, v))
        {
            return Some(Credential {
                value,
                location: Location::Header(name.clone()),
            });
        }
    }
    if let (Some(name), Some(query)) = (&sources.query, query) {
        if let Some(value) =
            query_value(query, name).filter(|v| !v.is_empty() && v.len() <= MAX_CREDENTIAL)
        {
            return Some(Credential {
                value: value.to_owned(),
                location: Location::Query(name.clone()),
            });
        }
    }
    if let Some(name) = &sources.cookie {
        if let Some(value) =
            cookie_value(headers, name).filter(|v| !v.is_empty() && v.len() <= MAX_CREDENTIAL)
        {
            return Some(Credential {
                value,
                location: Location::Cookie(name.clone()),
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

    fn found(h: &[(&str, &str)], query: Option<&str>) -> Option<(String, Location)> {
        extract(&headers(h), query, &KeySources::default()).map(|c| (c.value, c.location))
    }

    #[test]
    fn header_forms() {
        let auth = Location::Header("authorization".into());
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
            Some(("k3".into(), Location::Header("api-key".into())))
        );
        assert_eq!(
            found(&[("x-api-key", "k4")], None),
            Some(("k4".into(), Location::Header("x-api-key".into())))
        );
        // Basic auth is not ours: fall through to the next source.
        assert_eq!(
            found(&[("authorization", "Basic abc"), ("x-api-key", "k5")], None).map(|f| f.0),
            Some("k5".into())
        );
    }

    #[test]
    fn precedence_is_header_then_query_then_cookie() {
        let cookie = [("cookie", "a=1; api_key=c1")];
        assert_eq!(
            found(&cookie, None).unwrap().1,
            Location::Cookie("api_key".into())
        );
        assert_eq!(found(&cookie, Some("x=1&api_key=q1")).unwrap().0, "q1");
        let all = [("cookie", "api_key=c1"), ("x-api-key", "h1")];
        assert_eq!(found(&all, Some("api_key=q1")).unwrap().0, "h1");
        assert_eq!(found(&[], Some("api_key=")), None);
    }
}
