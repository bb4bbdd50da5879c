//! Redis replies as the fleet's follower reads them: anything shaped
//! otherwise is skipped, never trusted (any client of the server can
//! write what these read).
use redis::Value;

/// Whether stream id `a` is later than `b` (`ms-seq`, compared as numbers).
pub(super) fn later(a: &str, b: &str) -> bool {
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) > parse(b)
}

/// The id of the first entry of an `XREVRANGE`/`XRANGE` reply.
pub(super) fn first_id(reply: &Value) -> Option<String> {
    let Value::Array(entries) = reply else {
        return None;
    };
    match entries.first()? {
        Value::Array(pair) => text(pair.first()?).map(str::to_owned),
        _ => None,
    }
}

/// `(id, [field, value, ...])` of every entry of an `XREAD` reply on one
/// stream. Anything shaped otherwise is skipped, never trusted.
pub(super) fn stream_entries(reply: &Value) -> Vec<(String, Vec<Value>)> {
    let streams = match reply {
        Value::Array(streams) => streams.as_slice(),
        Value::Map(pairs) => return map_entries(pairs),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(pair) = stream else { continue };
        if let Some(Value::Array(entries)) = pair.get(1) {
            out.extend(entries.iter().filter_map(entry));
        }
    }
    out
}

/// RESP3 answers `XREAD` with a map of stream → entries.
fn map_entries(pairs: &[(Value, Value)]) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for (_, entries) in pairs {
        if let Value::Array(entries) = entries {
            out.extend(entries.iter().filter_map(entry));
        }
    }
    out
}

fn entry(value: &Value) -> Option<(String, Vec<Value>)> {
    let Value::Array(pair) = value else {
        return None;
    };
    let id = text(pair.first()?)?.to_owned();
    match pair.get(1)? {
        Value::Array(fields) => Some((id, fields.clone())),
        _ => None,
    }
}

pub(super) fn field<'a>(fields: &'a [Value], name: &str) -> Option<&'a [u8]> {
    fields.chunks_exact(2).find_map(|pair| match pair {
        [Value::BulkString(key), Value::BulkString(value)] if key == name.as_bytes() => {
            Some(value.as_slice())
        }
        _ => None,
    })
}

pub(super) fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// A hash's `(field, value)` pairs.
pub(super) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// `(field, value)` pairs of a flat `HSCAN`/`HGETALL`-style array (or a
/// RESP3 map); non-string items are skipped.
pub(super) fn pairs(value: &Value) -> Pairs {
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    match value {
        Value::Array(items) => (items.chunks_exact(2))
            .filter_map(|pair| Some((bytes(pair.first()?)?, bytes(pair.get(1)?)?)))
            .collect(),
        Value::Map(items) => (items.iter())
            .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// An `HSCAN` reply: the next cursor (0: done) and the pairs; `None`
/// when it is not shaped like one.
pub(super) fn scan_page(reply: &Value) -> Option<(u64, Pairs)> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let cursor = text(parts.first()?)?.parse().ok()?;
    Some((cursor, pairs(parts.get(1)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(later("1700000000001-0", "1700000000000-9"));
        assert!(later("10-0", "9-0"), "not as text");
        assert!(later("5-10", "5-9"));
        assert!(!later("5-9", "5-9"));
    }

    #[test]
    fn scan_pages_are_read_and_odd_ones_refused() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("17"),
            Value::Array(vec![bulk("a"), bulk("1"), bulk("b"), Value::Int(2)]),
        ]);
        let (cursor, pairs) = scan_page(&reply).unwrap();
        assert_eq!(cursor, 17);
        assert_eq!(pairs, vec![(b"a".to_vec(), b"1".to_vec())]);
        assert_eq!(scan_page(&Value::Array(vec![bulk("x")])), None);
        assert_eq!(scan_page(&Value::Nil), None);
    }
}
