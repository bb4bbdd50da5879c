use std::net::{TcpListener, TcpStream};

use super::*;

#[test]
fn nobody_offering_is_no_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let inherited = Inherited::take(
        dir.path(),
        &Request {
            pid: 1,
            pin_root: None,
        },
    )
    .unwrap();
    assert_eq!(inherited.from_pid, None);
    assert_eq!(inherited.unclaimed().count(), 0);
    // A socket file left behind with nobody listening is the same.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET)).unwrap());
    let inherited = Inherited::take(
        dir.path(),
        &Request {
            pid: 1,
            pin_root: None,
        },
    )
    .unwrap();
    assert_eq!(inherited.from_pid, None);
}

#[test]
fn the_same_sockets_arrive_and_accept_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let (proxy_addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let offer = runtime
        .block_on(async {
            Offer::bind(
                dir.path(),
                vec![(Kind::Proxy, &proxy), (Kind::Admin, &admin)],
            )
        })
        .unwrap();
    let task = runtime.spawn(offer.serve(None));
    // Queued in the old process's backlog before the hand-over.
    let queued = TcpStream::connect(proxy_addr).unwrap();
    let path = dir.path().to_owned();
    let mut inherited = runtime
        .block_on(runtime.spawn_blocking(move || {
            Inherited::take(
                &path,
                &Request {
                    pid: 7,
                    pin_root: None,
                },
            )
        }))
        .unwrap()
        .unwrap();
    assert_eq!(inherited.from_pid, Some(std::process::id()));
    assert!(inherited.claim(Kind::Admin, proxy_addr).is_empty());
    let admins = inherited.claim(Kind::Admin, admin_addr);
    assert_eq!(admins.len(), 1);
    let proxies = inherited.claim(Kind::Proxy, proxy_addr);
    assert_eq!(proxies.len(), 1);
    assert_eq!(inherited.unclaimed().count(), 0);
    // The old process lets go; the queued connection is the new one's.
    drop(proxy);
    let (accepted, _) = proxies[0].accept().unwrap();
    assert_eq!(accepted.peer_addr().unwrap(), queued.local_addr().unwrap());
    task.abort();
    let _ = runtime.block_on(task);
    assert!(
        !dir.path().join(SOCKET).exists(),
        "the offer's socket file is removed"
    );
}

#[test]
fn port_zero_never_claims_an_inherited_socket() {
    let mut inherited = Inherited::default();
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    inherited.sockets.push((Kind::Proxy, address, socket));
    assert!(inherited
        .claim(Kind::Proxy, SocketAddr::from(([127, 0, 0, 1], 0)))
        .is_empty());
    assert_eq!(inherited.claim(Kind::Proxy, address).len(), 1);
}
