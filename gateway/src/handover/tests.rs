use std::{
    net::{TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

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
    offer.publish().unwrap();
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

/// An offer on `dir` with a kernel path owner that does every step asked
/// and records it; the runtime serving both.
fn offering(
    dir: &Path,
    ready_within: Duration,
) -> (
    tokio::runtime::Runtime,
    TcpListener,
    std::sync::mpsc::Receiver<KernelStep>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let offer = runtime
        .block_on(async { Offer::bind(dir, vec![(Kind::Proxy, &proxy)]) })
        .unwrap()
        .ready_within(ready_within);
    offer.publish().unwrap();
    let (asks, mut asked) = tokio::sync::mpsc::channel::<KernelAsk>(1);
    let (record, recorded) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        while let Some(ask) = asked.recv().await {
            let _ = record.send(ask.step.clone());
            let _ = ask.done.send(true);
        }
    });
    runtime.spawn(offer.serve(Some(asks)));
    (runtime, proxy, recorded)
}

fn taking(dir: &Path) -> (Inherited, Predecessor) {
    let mut inherited = Inherited::take(
        dir,
        &Request {
            pid: 7,
            pin_root: Some("/sys/fs/bpf/gwtest-root".into()),
        },
    )
    .unwrap();
    let predecessor = inherited.predecessor().expect("a running gateway offers");
    (inherited, predecessor)
}

fn next_step(recorded: &std::sync::mpsc::Receiver<KernelStep>) -> KernelStep {
    recorded
        .recv_timeout(Duration::from_secs(20))
        .expect("a kernel step")
}

fn lend() -> KernelStep {
    KernelStep::Lend {
        pid: 7,
        pin_root: "/sys/fs/bpf/gwtest-root".into(),
    }
}

#[test]
fn the_pin_root_is_lent_on_request_and_handed_off_only_once_the_new_gateway_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, _proxy, recorded) = offering(dir.path(), Duration::from_secs(30));
    let (_inherited, mut predecessor) = taking(dir.path());
    assert!(
        recorded.try_recv().is_err(),
        "nothing is lent with the sockets"
    );
    assert!(predecessor.lend().unwrap());
    assert_eq!(next_step(&recorded), lend());
    assert_eq!(predecessor.ready(true).unwrap(), Confirmed::Yes);
    assert_eq!(next_step(&recorded), KernelStep::HandOff);
}

#[test]
fn a_new_gateway_that_goes_away_before_it_is_ready_gets_the_pin_root_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, _proxy, recorded) = offering(dir.path(), Duration::from_secs(30));
    let (inherited, mut predecessor) = taking(dir.path());
    assert!(predecessor.lend().unwrap());
    assert_eq!(next_step(&recorded), lend());
    // It fails (a bad certificate, XDP refused, a crash): the line closes.
    drop((inherited, predecessor));
    assert_eq!(next_step(&recorded), KernelStep::TakeBack);
}

#[test]
fn a_new_gateway_ready_without_the_lent_pin_root_gets_it_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, _proxy, recorded) = offering(dir.path(), Duration::from_secs(30));
    let (_inherited, mut predecessor) = taking(dir.path());
    assert!(predecessor.lend().unwrap());
    assert_eq!(next_step(&recorded), lend());
    // Its XDP failed and it runs userspace-only.
    assert_eq!(predecessor.ready(false).unwrap(), Confirmed::Yes);
    assert_eq!(next_step(&recorded), KernelStep::TakeBack);
}

#[test]
fn a_new_gateway_not_ready_in_time_is_refused_and_the_pin_root_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, _proxy, recorded) = offering(dir.path(), Duration::from_millis(200));
    let (_inherited, mut predecessor) = taking(dir.path());
    assert!(predecessor.lend().unwrap());
    assert_eq!(next_step(&recorded), lend());
    // It takes longer than the old one's handover_timeout.
    assert_eq!(next_step(&recorded), KernelStep::TakeBack);
    let refused = predecessor.ready(true).unwrap_err().to_string();
    assert!(refused.contains("not ready within"), "{refused}");
    assert!(recorded.try_recv().is_err(), "nothing handed off");
}

#[test]
fn a_new_gateway_asking_for_the_pin_root_too_late_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, _proxy, recorded) = offering(dir.path(), Duration::from_millis(200));
    let (_inherited, mut predecessor) = taking(dir.path());
    // Its certificates and binds took longer than the old one's
    // handover_timeout: the refusal is waiting when it asks.
    let mut waiting = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&predecessor.stream),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut waiting, 1, 20_000) }, 1);
    let refused = predecessor.lend().unwrap_err().to_string();
    assert!(refused.contains("not ready within"), "{refused}");
    assert!(recorded.try_recv().is_err(), "nothing lent");
}
