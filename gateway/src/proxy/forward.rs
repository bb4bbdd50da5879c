//! Rewriting a request for the upstream and a response for the client:
//! hop-by-hop headers (RFC 9110 §7.6.1), credentials, identity and tracing
//! headers, `X-Forwarded-For`.

use http::{header, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::{addr_text::Peer, credentials::query_value};
use crate::config::KeySources;

/// Always hop-by-hop, whether or not `Connection` lists them, and
/// `Upgrade` (put back for a WebSocket upgrade, see [`super::upgrade::set_upgrade`]); in
/// the order of their bits in [`hop_bit`].
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    // h2c's upgrade settings (RFC 7540 §3.2.1); h2c is never upgraded to.
    HeaderName::from_static("http2-settings"),
    header::UPGRADE,
];

/// Forwarding headers only a trusted proxy may send; from anyone else they
/// are dropped (`X-Forwarded-For`/`-Proto` are set from the peer instead).
#[cfg(test)]
static FORWARDING: [HeaderName; 4] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
];

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes the headers `doomed` picks. One pass over the names present
/// (a handful) instead of a hashed lookup per name that might be: on the
/// request path most of those lookups find nothing. Allocates only when
/// something goes.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| doomed(name))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Removes `also` and each of `names` that `headers` holds. One pass over
/// the names present finds which (most are absent: `Authorization`, all
/// key headers but the one used), so only those are hashed and looked up.
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName], also: &HeaderName) {
    if names.len() >= 64 {
        names
            .iter()
            .chain([also])
            .for_each(|name| drop(headers.remove(name)));
        return;
    }
    let bit = |name: &HeaderName| match names.iter().position(|n| n == name) {
        Some(i) => 1u64 << i,
        None if name == also => 1 << 63,
        None => 0,
    };
    let present = (headers.keys()).fold(0, |bits, name| bits | bit(name));
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & (1 << 63) != 0 {
        headers.remove(also);
    }
}

/// `name`'s bit (its place in [`HOP_BY_HOP`]) if it is one of them, else
/// 0: one match on the text a header map holds (lowercase), no hashing.
fn hop_bit(name: &str) -> u16 {
    match name {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "proxy-authorization" => 1 << 3,
        "te" => 1 << 4,
        "trailer" => 1 << 5,
        "transfer-encoding" => 1 << 6,
        "http2-settings" => 1 << 7,
        "upgrade" => 1 << 8,
        _ => 0,
    }
}

/// Removes hop-by-hop headers, including those `Connection` names. Most
/// messages carry none but `Connection` itself (`keep-alive` from most
/// upstreams): one pass over the names present finds which of
/// [`HOP_BY_HOP`] go, each is removed by name (no list of names built),
/// and tokens that are no header to remove (`close`, `keep-alive`) are
/// not made into names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = (headers.keys()).fold(0, |bits, name| bits | hop_bit(name.as_str()));
    if present == 0 {
        return;
    }
    let named = match present & hop_bit("connection") {
        0 => Vec::new(),
        _ => connection_named(headers),
    };
    for (i, hop) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(hop);
        }
    }
    for name in named {
        headers.remove(name);
    }
}

/// The headers `Connection` names for removal beside [`HOP_BY_HOP`].
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    (headers.get_all(header::CONNECTION).iter())
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| {
            !token.eq_ignore_ascii_case(b"keep-alive")
                && !token.eq_ignore_ascii_case(b"close")
                && !token.is_empty()
                && !(HOP_BY_HOP.iter())
                    .any(|hop| hop.as_str().as_bytes().eq_ignore_ascii_case(token))
        })
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        // Never what routes and frames the request: `Connection: host`
        // would have the upstream answer for its default virtual host.
        .filter(|name| !matches!(*name, header::HOST | header::CONTENT_LENGTH))
        .collect()
}

/// Removes every header whose name is one of `identity` once any byte
/// other than a letter or digit reads as `-` (`X_Client_Id`, `x-client.id`,
/// see [`folds_to`]): such a spelling would pass as the gateway's own
/// header. Also removes `ours`: fields the gateway sets itself, in the same pass.
pub fn strip_identity(headers: &mut HeaderMap, identity: &[&HeaderName], ours: &[HeaderName]) {
    remove_where(headers, |name| {
        let name = name.as_str();
        (identity.iter()).any(|id| folds_to(name, id.as_str()))
            || (ours.iter()).any(|ours| folds_to(name, ours.as_str()))
    });
}

/// Whether `name` is `canonical` as an upstream that names variables
/// after fields sees it: CGI, WSGI and PHP read `_` as `-`, and lighttpd's
/// CGI, FastCGI and SCGI turn every byte that is not a letter or digit into
/// `_`, so `X-Client.Id` and `X-Client~Id` are its `HTTP_X_CLIENT_ID` too.
fn folds_to(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && (name.bytes().zip(canonical.bytes()))
            .all(|(n, c)| n == c || (c == b'-' && !n.is_ascii_alphanumeric()))
}

/// What a trusted proxy may send about the client and no one else may
/// (`Forwarded`, `X-Forwarded-Host`/`-Port`, `X-Real-IP`, and
/// `X-Forwarded-For`/`-Proto`, which are set from the peer), as text.
const FORWARDING_ALL: [&str; 6] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// Removes every place a key could be (not just the one used), so no second
/// credential slips through to the upstream. Returns the new query.
pub fn strip_credentials(
    headers: &mut HeaderMap,
    query: Option<&str>,
    sources: &KeySources,
    key_headers: &[HeaderName],
) -> Option<String> {
    // A bearer JWT travels in Authorization whatever the key sources say.
    remove_present(headers, key_headers, &header::AUTHORIZATION);
    // Most requests carry no cookie: nothing to rebuild then.
    let cookies = sources
        .cookie
        .as_ref()
        .filter(|_| headers.contains_key(header::COOKIE));
    if let Some(cookie_name) = cookies {
        let kept: Vec<String> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
            .filter(|pair| {
                !pair.is_empty() && pair.split_once('=').map(|(k, _)| k) != Some(cookie_name)
            })
            .map(str::to_owned)
            .collect();
        headers.remove(header::COOKIE);
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            if !kept.is_empty() {
                headers.insert(header::COOKIE, value);
            }
        }
    }
    let query = query?;
    match &sources.query {
        Some(name) if query_value(query, name).is_some() => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
                .collect();
            (!kept.is_empty()).then(|| kept.join("&"))
        }
        _ => Some(query.to_owned()),
    }
}

/// `X-Forwarded-For`/`-Proto` as the upstream gets them, from the real
/// peer: a client's own values are kept (appended to) only when the peer
/// is a trusted proxy, and so are `Forwarded`, `X-Forwarded-Host`/`-Port`
/// and `X-Real-IP` (dropped from anyone else). Kept beside the header map
/// so the direct path writes them without inserting (see
/// [`super::rewrite::Added`]).
pub struct Forwarded {
    /// The new `X-Forwarded-For`, in place of every line of it.
    pub for_: HeaderValue,
    /// The listener's protocol, unless a trusted proxy said its own.
    pub proto: Option<&'static str>,
}

pub const X_FORWARDED_FOR_TEXT: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO_TEXT: &str = "x-forwarded-proto";

impl Forwarded {
    /// What `peer` is to be forwarded as; removes from `headers` what it
    /// may not send and the `X-Forwarded-For` lines the new value folds.
    pub fn of(
        headers: &mut HeaderMap,
        peer: &Peer,
        trusted: &[IpNet],
        proto: &'static str,
    ) -> Self {
        let ip = peer.addr.ip().to_canonical();
        // Other spellings (`_`, `.`) are never a proxy's: gone whoever sent
        // them.
        let spelt_as = |name: &HeaderName, canonical_too: bool| {
            let name = name.as_str();
            (FORWARDING_ALL.iter()).any(|f| folds_to(name, f) && (canonical_too || name != *f))
        };
        if !trusted.iter().any(|net| net.contains(&ip)) {
            remove_where(headers, |name| spelt_as(name, true));
            let proto = Some(proto);
            return Self {
                for_: peer.text.clone(),
                proto,
            };
        }
        remove_where(headers, |name| spelt_as(name, false));
        // Every line a trusted proxy sent (they are one list, RFC 9110 §5.3),
        // or the upstream would see only what the client wrote on the first.
        let previous: Vec<&str> = (headers.get_all(&X_FORWARDED_FOR).iter())
            .filter_map(|v| v.to_str().ok())
            .collect();
        let for_ = match previous.is_empty() {
            true => peer.text.clone(),
            false => {
                let text = peer.text.to_str().unwrap_or_default();
                let joined = format!("{}, {text}", previous.join(", "));
                HeaderValue::from_str(&joined).unwrap_or_else(|_| peer.text.clone())
            }
        };
        headers.remove(&X_FORWARDED_FOR);
        let proto = (!headers.contains_key(&X_FORWARDED_PROTO)).then_some(proto);
        Self { for_, proto }
    }

    /// Puts them in `headers` (hyper's path).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        headers.insert(X_FORWARDED_FOR, self.for_.clone());
        if let Some(proto) = self.proto {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
    }
}

/// [`Forwarded`] set in `headers`, as the hyper path has it.
#[cfg(test)]
fn set_forwarded(headers: &mut HeaderMap, peer: &Peer, trusted: &[IpNet], proto: &'static str) {
    Forwarded::of(headers, peer, trusted, proto).insert_into(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> Peer {
        Peer::from(std::net::SocketAddr::new(ip.parse().unwrap(), 1))
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        // The match is the list, bit for place.
        for (i, hop) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_bit(hop.as_str()), 1 << i, "{hop}");
        }
        // A client cannot have the gateway drop what routes the request.
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, content-length"),
        );
        h.insert(header::HOST, HeaderValue::from_static("api.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_hop_by_hop_header_goes_with_all_its_lines() {
        let mut h = HeaderMap::new();
        for hop in &HOP_BY_HOP {
            h.append(hop, HeaderValue::from_static("keep-alive"));
            h.append(hop, HeaderValue::from_static("1"));
        }
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
        // An upstream's usual `Connection: keep-alive` alone.
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
        // Tokens in any case, spacing and lines.
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive ,, X-Other"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("TE,x-third"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("x-third", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn identity_spellings_go() {
        let mut h = HeaderMap::new();
        let id = HeaderName::from_static("x-client-id");
        for name in ["x_client_id", "x-client_id", "x-client-id"] {
            h.insert(name, HeaderValue::from_static("cl_spoofed"));
        }
        // Every byte a field name may hold that is not a letter or digit:
        // lighttpd's CGI reads each as `_`, so as `-`.
        for other in TOKEN_PUNCTUATION.chars() {
            let name = format!("x-client{other}id");
            h.insert(
                HeaderName::try_from(name).unwrap(),
                HeaderValue::from_static("cl_spoofed"),
            );
        }
        h.insert(X_REQUEST_ID, HeaderValue::from_static("spoofed"));
        h.insert("x_request-id", HeaderValue::from_static("spoofed"));
        h.insert("x.request~id", HeaderValue::from_static("spoofed"));
        // Not the same name, however read: kept.
        h.insert("x-client-ids", HeaderValue::from_static("kept"));
        h.insert("x-clientaid", HeaderValue::from_static("kept"));
        strip_identity(&mut h, &[&id], &[X_REQUEST_ID]);
        // Ours (the request id) go in every spelling too.
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-client-ids", "x-clientaid"]);
    }

    /// The bytes besides letters and digits that a field name may hold
    /// (RFC 9110 `tchar`).
    const TOKEN_PUNCTUATION: &str = "!#$%&'*+-.^_`|~";

    #[test]
    fn all_credential_places_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.insert("x-api-key", HeaderValue::from_static("b"));
        h.append("x-api-key", HeaderValue::from_static("b2"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; api_key=c"),
        );
        let sources = KeySources::default();
        let names = super::super::credentials::header_names(&sources);
        let query = strip_credentials(&mut h, Some("a=1&api_key=d&b=2"), &sources, &names);
        assert_eq!(query.as_deref(), Some("a=1&b=2"));
        assert!(!h.contains_key(header::AUTHORIZATION) && !h.contains_key("x-api-key"));
        assert_eq!(h[header::COOKIE], "theme=dark");
        assert_eq!(h["x-kept"], "1");
        // Every key header, however many a route names.
        let many: Vec<HeaderName> = (0..70)
            .map(|i| format!("x-key-{i}").parse().unwrap())
            .collect();
        for name in [&many[0], &many[63], &many[69]] {
            h.insert(name, HeaderValue::from_static("k"));
        }
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        strip_credentials(&mut h, None, &sources, &many);
        assert_eq!(h.len(), 2, "{h:?}");
        strip_credentials(&mut h, None, &sources, &many[..2]);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(
            strip_credentials(&mut h, Some("api_key=d"), &sources, &names),
            None
        );
    }

    #[test]
    fn every_forwarded_for_line_of_a_trusted_proxy_is_kept() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        set_forwarded(&mut h, &peer("10.0.0.9"), &trusted, "http");
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 203.0.113.7, 10.0.0.9");
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
    }

    /// CGI, WSGI and PHP read `x_forwarded_for` as `X-Forwarded-For`: no
    /// one's `_` spelling reaches the upstream, a trusted proxy's `-` one
    /// does.
    /// The configuration refuses, as an identity header name, every field
    /// this module strips or the gateway sets (config keeps its own list:
    /// it does not import the proxy).
    #[test]
    fn identity_headers_cannot_be_named_after_what_is_stripped_or_set() {
        let names = (HOP_BY_HOP.iter().map(HeaderName::as_str))
            .chain(FORWARDING_ALL)
            .chain(["x-request-id", "traceparent", "tracestate"])
            .chain(["host", "content-length", "authorization", "cookie"]);
        for name in names {
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:1\"\n[forwarding]\nclient_id_header = \"{name}\"\n"
            );
            let refused = crate::config::Config::parse(&text).map(drop).unwrap_err();
            assert!(
                refused
                    .to_string()
                    .starts_with("forwarding.client_id_header"),
                "{name}: {refused}"
            );
        }
        // The texts written raw are the names'.
        assert_eq!(X_FORWARDED_FOR_TEXT, X_FORWARDED_FOR.as_str());
        assert_eq!(X_FORWARDED_PROTO_TEXT, X_FORWARDED_PROTO.as_str());
    }

    #[test]
    fn other_spellings_of_forwarding_headers_never_pass() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        for (peer_ip, kept) in [("192.0.2.1", 0), ("10.0.0.9", 3)] {
            let mut h = HeaderMap::new();
            for name in FORWARDING_ALL {
                let underscored = HeaderName::try_from(name.replace('-', "_")).unwrap();
                h.insert(underscored, HeaderValue::from_static("6.6.6.6"));
                h.insert(name, HeaderValue::from_static("1.2.3.4"));
            }
            h.insert("x_Forwarded-For", HeaderValue::from_static("6.6.6.6"));
            for other in TOKEN_PUNCTUATION.chars().filter(|&c| c != '-') {
                for name in [format!("x-forwarded{other}for"), format!("x{other}real-ip")] {
                    let name = HeaderName::try_from(name).unwrap();
                    h.insert(name, HeaderValue::from_static("6.6.6.6"));
                }
            }
            let forwarded = Forwarded::of(&mut h, &peer(peer_ip), &trusted, "http");
            // What is left: a trusted proxy's own (X-Forwarded-For is folded
            // into the new value; a trusted X-Forwarded-Proto stays too).
            let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            assert!(
                left.iter().all(|name| !name.contains(['_', '.', '~'])),
                "{left:?}"
            );
            assert_eq!(left.len(), kept + usize::from(kept > 0) * 2, "{left:?}");
            assert!(!forwarded.for_.to_str().unwrap().contains("6.6.6.6"));
        }
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        set_forwarded(&mut h, &peer("10.0.0.9"), &[], "http");
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        set_forwarded(
            &mut h,
            &peer("10.0.0.9"),
            &["10.0.0.0/8".parse().unwrap()],
            "https",
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9");
        // A trusted proxy's own X-Forwarded-Proto is kept...
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        // ...an untrusted client's is replaced by what the listener speaks.
        set_forwarded(&mut h, &peer("192.0.2.1"), &[], "https");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_FOR], "192.0.2.1");
        // Forwarded and friends: a trusted proxy's are kept, no one else's.
        for name in &FORWARDING {
            h.insert(name, HeaderValue::from_static("spoofed"));
        }
        set_forwarded(
            &mut h,
            &peer("10.0.0.9"),
            &["10.0.0.0/8".parse().unwrap()],
            "http",
        );
        assert!(FORWARDING.iter().all(|name| h.contains_key(name)));
        set_forwarded(&mut h, &peer("192.0.2.1"), &[], "http");
        assert!(FORWARDING.iter().all(|name| !h.contains_key(name)));
    }
}
