//! Refusals: a state dir or socket another user owns or may write, and a
//! process of another user at either end. The tests needing another uid
//! fork a child that drops to `nobody`; they need root and say so when
//! skipped.
use std::{
    ffi::CString,
    net::TcpListener,
    os::fd::FromRawFd,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::Path,
    time::{Duration, Instant},
};

use super::{Inherited, Kind, Offer, Request, SOCKET};

/// A bounded wait between polls (these tests are synchronous: no runtime
/// thread is blocked).
#[allow(clippy::disallowed_methods, reason = "a sync test polling a child")]
fn pause(duration: Duration) {
    std::thread::sleep(duration);
}

fn request() -> Request {
    Request {
        pid: 7,
        pin_root: None,
    }
}

/// The refusal's text, checked to be one naming `path`.
fn refused(result: Result<impl std::fmt::Debug, super::HandoverError>, path: &Path) -> String {
    let error = result.expect_err("refused").to_string();
    assert!(error.starts_with("refusing"), "{error}");
    assert!(
        error.contains(&path.display().to_string()),
        "names {}: {error}",
        path.display()
    );
    error
}

fn root() -> bool {
    let root = super::trust::own_uid() == 0;
    if !root {
        eprintln!("SKIPPED: needs root to act as another user");
    }
    root
}

/// `nobody`'s uid and gid.
fn nobody() -> (u32, u32) {
    let name = CString::new("nobody").unwrap();
    // SAFETY: a NUL-terminated name; the entry is read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return (65534, 65534);
    }
    // SAFETY: non-null, as returned by getpwnam.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// The unix socket address of `path`.
fn sockaddr(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = CString::new(path.as_os_str().as_bytes()).unwrap();
    let bytes = bytes.as_bytes_with_nul();
    assert!(bytes.len() <= address.sun_path.len(), "path too long");
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    (address, length)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// Runs `child` in a forked process as `nobody` (killed after 10 s);
/// its exit code. `child` may only make async-signal-safe calls.
fn as_nobody(child: impl FnOnce() -> i32) -> i32 {
    let (uid, gid) = nobody();
    // SAFETY: the child makes only async-signal-safe calls, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain syscalls in the forked child.
        unsafe {
            libc::alarm(10);
            if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(90);
            }
            libc::_exit(child());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            break;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        pause(Duration::from_millis(10));
    }
    assert!(libc::WIFEXITED(status), "the child was killed: {status}");
    libc::WEXITSTATUS(status)
}

#[test]
fn a_state_dir_group_or_others_may_write_is_refused_on_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    let error = refused(Inherited::take(dir.path(), &request()), dir.path());
    assert!(error.contains("writable by group or others"), "{error}");
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let offered = runtime.block_on(async { Offer::bind(dir.path(), vec![(Kind::Proxy, &proxy)]) });
    refused(offered.map(drop), dir.path());
    assert!(!dir.path().join(SOCKET).exists(), "nothing offered");
}

#[test]
fn a_state_dir_or_socket_another_user_owns_is_refused() {
    if !root() {
        return;
    }
    let (uid, gid) = nobody();
    let dir = tempfile::tempdir().unwrap();
    chown(dir.path(), uid, gid);
    let error = refused(Inherited::take(dir.path(), &request()), dir.path());
    assert!(error.contains(&format!("owned by uid {uid}")), "{error}");

    chown(dir.path(), 0, 0);
    let socket = dir.path().join(SOCKET);
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    chmod(&socket, 0o600);
    chown(&socket, uid, gid);
    let error = refused(Inherited::take(dir.path(), &request()), &socket);
    assert!(error.contains(&format!("owned by uid {uid}")), "{error}");
}

#[test]
fn sockets_offered_by_another_user_are_refused() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SOCKET);
    // Bound here (the file is root's, 0600), listened on by `nobody`: the
    // peer credentials are the listener's.
    let (address, length) = sockaddr(&path);
    // SAFETY: plain syscalls; `address` is a valid sockaddr_un.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        assert_eq!(
            libc::bind(fd, std::ptr::from_ref(&address).cast(), length),
            0
        );
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    chmod(&path, 0o600);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // What a trusted gateway would answer, so only the check refuses.
    let answer = b"{\"pid\":1,\"sockets\":[]}\n";
    let taken = std::thread::scope(|scope| {
        let taker = scope.spawn(|| {
            // Until the child listens: a refused connect is "nobody offers".
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let taken = Inherited::take(dir.path(), &request());
                if !matches!(&taken, Ok(inherited) if inherited.from_pid.is_none())
                    || Instant::now() > deadline
                {
                    return taken;
                }
                pause(Duration::from_millis(20));
            }
        });
        let code = as_nobody(|| {
            // SAFETY: plain syscalls on descriptors the child owns.
            unsafe {
                if libc::listen(fd, 1) != 0 {
                    return 91;
                }
                let client = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
                if client < 0 {
                    return 92;
                }
                libc::write(client, answer.as_ptr().cast(), answer.len());
                let mut byte = 0u8;
                // Until the taker hangs up.
                while libc::read(client, std::ptr::from_mut(&mut byte).cast(), 1) > 0 {}
                0
            }
        });
        let taken = taker.join().unwrap();
        assert_eq!(
            code,
            0,
            "the child's exit code; taken: {:?}",
            taken.as_ref().map(|i| i.from_pid)
        );
        taken
    });
    let error = refused(taken.map(|i| i.from_pid), &path);
    assert!(error.contains("runs as uid"), "{error}");
}

#[test]
fn another_users_request_gets_no_sockets_even_through_an_open_socket_file() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Searchable, so only the socket file's mode and the peer check stand.
    chmod(dir.path(), 0o711);
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let offer = runtime
        .block_on(async { Offer::bind(dir.path(), vec![(Kind::Proxy, &proxy)]) })
        .unwrap();
    offer.publish().unwrap();
    let path = dir.path().join(SOCKET);
    // A mistake (or another tool) opened the socket file to everyone.
    chmod(&path, 0o666);
    runtime.spawn(offer.serve(None));
    let (address, length) = sockaddr(&path);
    let request = b"{\"pid\":7}\n";
    let code = as_nobody(|| {
        // SAFETY: plain syscalls; `address` is a valid sockaddr_un.
        unsafe {
            let socket = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::connect(socket, std::ptr::from_ref(&address).cast(), length) != 0 {
                return 94;
            }
            libc::write(socket, request.as_ptr().cast(), request.len());
            let mut byte = 0u8;
            // The offer hangs up (or resets) without a byte of answer.
            match libc::read(socket, std::ptr::from_mut(&mut byte).cast(), 1) {
                1 => 95,
                _ => 0,
            }
        }
    });
    assert_eq!(code, 0, "the child's exit code (95: it got an answer)");
}
