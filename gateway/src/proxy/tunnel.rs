//! An upgraded (WebSocket) connection: bytes copied both ways until both
//! sides are done, or until no byte moved either way for
//! `limits.tunnel_idle_timeout`, when both sides are closed. The client
//! connection's permit (its slot in `max_connections` and in its source's
//! count) lives as long as the tunnel. A tunnel whose client is banned
//! while it is open is closed too, within [`BAN_CHECK`]: without XDP
//! nothing else stops it (the proxy refuses a banned source's requests,
//! and a tunnel makes none; found by an attack, bytes kept reaching the
//! upstream after the ban).
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::serve::ConnectionPermit;

const BUFFER: usize = 16 * 1024;

/// How often an open tunnel asks whether its client was banned since, on
/// top of before each copy.
const BAN_CHECK: Duration = Duration::from_secs(1);

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their half.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The client was banned.
    Banned,
}

/// What one copy step came to.
enum Step {
    Moved(std::io::Result<(bool, usize)>),
    Idle,
    Banned,
}

/// Copies between `client` and `upstream` (see the module doc), while
/// `banned` says no. `_permit` is held until the tunnel ends.
pub async fn splice<C, U>(
    mut client: C,
    mut upstream: U,
    idle: Duration,
    banned: impl Fn() -> bool,
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
        let outcome = {
            tokio::pin!(step);
            let quiet = tokio::time::sleep(idle);
            tokio::pin!(quiet);
            // Its first tick is at once: a check before each copy.
            let mut checks = tokio::time::interval(BAN_CHECK);
            loop {
                tokio::select! {
                    moved = &mut step => break Step::Moved(moved),
                    () = &mut quiet => break Step::Idle,
                    _ = checks.tick() => if banned() {
                        break Step::Banned;
                    },
                }
            }
        };
        match outcome {
            Step::Idle | Step::Banned => {
                let _ = tokio::join!(client.shutdown(), upstream.shutdown());
                return Ok(match outcome {
                    Step::Banned => Ended::Banned,
                    _ => Ended::Idle,
                });
            }
            Step::Moved(Err(error)) => return Err(error),
            Step::Moved(Ok((true, 0))) => client_open = false,
            Step::Moved(Ok((false, 0))) => upstream_open = false,
            Step::Moved(Ok(_)) => {}
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
        let tunnel = tokio::spawn(splice(
            client,
            upstream,
            Duration::from_millis(200),
            || false,
            None,
        ));
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
        let idle = Duration::from_secs(60);
        let tunnel = tokio::spawn(splice(client, upstream, idle, || false, None));
        drop((client_far, upstream_far));
        let ended = tokio::time::timeout(Duration::from_secs(10), tunnel).await;
        assert_eq!(ended.unwrap().unwrap().unwrap(), Ended::Closed);
    }

    /// Banned while nothing moves: closed at the next check, not at the
    /// idle timeout.
    #[tokio::test]
    async fn a_tunnel_whose_client_is_banned_is_closed_on_both_sides() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let banned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = banned.clone();
        let is_banned = move || flag.load(std::sync::atomic::Ordering::Relaxed);
        let idle = Duration::from_secs(60);
        let tunnel = tokio::spawn(splice(client, upstream, idle, is_banned, None));
        client_far.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        upstream_far.read_exact(&mut buf).await.unwrap();
        banned.store(true, std::sync::atomic::Ordering::Relaxed);
        let ended = tokio::time::timeout(Duration::from_secs(10), tunnel).await;
        assert_eq!(ended.unwrap().unwrap().unwrap(), Ended::Banned);
        assert_eq!(client_far.read(&mut buf).await.unwrap(), 0);
        assert_eq!(upstream_far.read(&mut buf).await.unwrap(), 0);
    }
}
