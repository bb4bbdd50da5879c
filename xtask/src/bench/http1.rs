//! A keep-alive HTTP/1.1 client just big enough for the benches' paced
//! requests: one `GET` with an API key, its status, never retried (a
//! resent request would count twice against a limit).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub(crate) type Conn = Option<BufReader<TcpStream>>;

/// One keep-alive `GET` with `key` in `x-api-key` on `conn` (opened to
/// `port` when `None`, dropped after an error or `Connection: close`): the
/// status. Enough HTTP/1.1 for these proxies' answers. Never retries: a
/// resent request would count twice against the limit.
pub(crate) fn get(conn: &mut Conn, port: u16, key: &str) -> Result<u16> {
    let result = exchange(conn, port, key);
    if !matches!(result, Ok((_, true))) {
        *conn = None;
    }
    result.map(|(status, _)| status)
}

fn exchange(conn: &mut Conn, port: u16, key: &str) -> Result<(u16, bool)> {
    let conn = match conn {
        Some(conn) => conn,
        None => {
            let stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.insert(BufReader::new(stream))
        }
    };
    let request = format!("GET /limits HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {key}\r\n\r\n");
    conn.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    let next = |line: &mut String, conn: &mut BufReader<TcpStream>| -> Result<()> {
        line.clear();
        if conn.read_line(line)? == 0 {
            bail!("connection closed mid-answer");
        }
        Ok(())
    };
    next(&mut line, conn)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked, mut keep) = (None, false, true);
    loop {
        next(&mut line, conn)?;
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<u64>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if chunked {
        bail!("a chunked answer: none of these proxies sends one for these requests");
    } else if let Some(n) = length {
        if std::io::copy(&mut conn.by_ref().take(n), &mut std::io::sink())? != n {
            bail!("connection closed mid-body");
        }
    } else {
        conn.read_to_end(&mut Vec::new())?;
        keep = false;
    }
    Ok((status, keep))
}
