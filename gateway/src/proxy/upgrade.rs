//! HTTP/1.1 upgrades through the proxy: only WebSocket, asked for by the
//! client and agreed to by the upstream's 101.
use http::{header, HeaderMap, HeaderValue};

/// The protocol an HTTP/1.1 upgrade asks for (or a 101 agrees to):
/// `Upgrade: websocket` (any case) with `Connection: upgrade`. Only
/// WebSocket is proxied: any other `Upgrade` (`h2c`, ...) is dropped with
/// the other hop-by-hop headers and the request served as plain HTTP/1.1,
/// as HAProxy does.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    // `Upgrade` first: almost no request has one.
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let protocol = upgrades.next().filter(|_| upgrades.next().is_none())?;
    let websocket = protocol
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"websocket");
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    (connection_upgrade && websocket).then(|| protocol.clone())
}

/// Whether a 101 with `headers` agrees to the upgrade the request asked
/// for (`asked`, see [`upgrade_protocol`]: only WebSocket is proxied);
/// else what is wrong, for the log: the client asked for none, or the
/// upstream switched to something else.
pub fn switched_as_asked(
    asked: Option<&HeaderValue>,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    asked.ok_or("unsolicited_101")?;
    upgrade_protocol(headers)
        .map(drop)
        .ok_or("101_not_to_websocket")
}

/// Puts back the two hop-by-hop headers an upgrade needs on the next hop.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_websocket_upgrades_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(upgrade_protocol(&h).unwrap(), "WebSocket");
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(upgrade_protocol(&h), None);
    }

    #[test]
    fn a_101_must_agree_to_the_upgrade_asked_for() {
        let websocket = HeaderValue::from_static("websocket");
        let mut switched = HeaderMap::new();
        switched.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        switched.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(switched_as_asked(Some(&websocket), &switched), Ok(()));
        assert_eq!(switched_as_asked(None, &switched), Err("unsolicited_101"));
        switched.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        let other = switched_as_asked(Some(&websocket), &switched);
        assert_eq!(other, Err("101_not_to_websocket"));
        assert_eq!(
            switched_as_asked(Some(&websocket), &HeaderMap::new()),
            Err("101_not_to_websocket")
        );
    }
}
