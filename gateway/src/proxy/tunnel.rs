//! An upgraded (WebSocket) connection: bytes copied both ways until both
//! sides are done, or until no byte moved either way for
//! `limits.tunnel_idle_timeout`, when both sides are closed. The client
//! connection's permit (its slot in `max_connections` and in its source's
//! count) lives as long as the tunnel.
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::serve::ConnectionPermit;

const BUFFER: usize = 16 * 1024;

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their half.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
}

/// Copies between `client` and `upstream` (see the module doc). `_permit`
/// is held until the tunnel ends.
pub async fn splice<C, U>(
    mut client: C,
    mut upstream: U,
    idle: Duration,
    _permit: Option<std::sync::Arc<ConnectionPermit>>,
) -> std::io::Result<Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut client_bytes = vec![0; BUFFER];
    let mut upstream_bytes = vec![0; BUFFER];
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        // One read and the write it feeds, under the idle timer: a side that
        // stops reading stalls the other's write, which counts as idle too.
        let step = async {
            let (from_client, n) = tokio::select! {
                read = client.read(&mut client_bytes), if client_open => (true, read?),
                read = upstream.read(&mut upstream_bytes), if upstream_open => (false, read?),
            };
            match (from_client, n) {
                (true, 0) => upstream.shutdown().await?,
                (true, n) => upstream.write_all(&client_bytes[..n]).await?,
                (false, 0) => client.shutdown().await?,
                (false, n) => client.write_all(&upstream_bytes[..n]).await?,
            }
            Ok::<_, std::io::Error>((from_client, n))
        };
        match tokio::time::timeout(idle, step).await {
            Err(_elapsed) => {
                let _ = tokio::join!(client.shutdown(), upstream.shutdown());
                return Ok(Ended::Idle);
            }
            Ok(Err(error)) => return Err(error),
            Ok(Ok((true, 0))) => client_open = false,
            Ok(Ok((false, 0))) => upstream_open = false,
            Ok(Ok(_)) => {}
        }
    }
    Ok(Ended::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_an_idle_tunnel_is_closed() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(splice(client, upstream, Duration::from_millis(200), None));
        client_far.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        upstream_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        upstream_far.write_all(b"pong").await.unwrap();
        client_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // Then nothing: both far ends see EOF.
        let ended = tokio::time::timeout(Duration::from_secs(10), tunnel).await;
        assert_eq!(ended.unwrap().unwrap().unwrap(), Ended::Idle);
        assert_eq!(client_far.read(&mut buf).await.unwrap(), 0);
        assert_eq!(upstream_far.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_tunnel_closed_on_both_sides_ends() {
        let (client, client_far) = tokio::io::duplex(64);
        let (upstream, upstream_far) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(splice(client, upstream, Duration::from_secs(60), None));
        drop((client_far, upstream_far));
        let ended = tokio::time::timeout(Duration::from_secs(10), tunnel).await;
        assert_eq!(ended.unwrap().unwrap().unwrap(), Ended::Closed);
    }
}
