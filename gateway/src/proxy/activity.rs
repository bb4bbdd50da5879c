//! What one client connection is doing, shared by its serve loop, its
//! requests and its socket wrappers: the requests in flight and when the
//! last one ended, whether it speaks HTTP/2, is draining, may be parked
//! (see [`super::park`]), and whether its writes still move (and its
//! HTTP/2 responses' frames, [`WindowStalls`]).
use std::{
    io,
    os::fd::RawFd,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::window_stalls::WindowStalls;
use crate::{clock::monotonic_ns, in_flight::InFlight};

pub(super) struct Activity {
    requests: InFlight,
    http2: AtomicBool,
    draining: AtomicBool,
    /// A request that may leave hyper mid-message once answered (a body,
    /// an upgrade, CONNECT) was seen: the connection is never parked.
    unparkable: AtomicBool,
    /// The serve loop asked hyper to close so the connection could be
    /// parked: the socket wrapper keeps the socket open.
    pub(super) parking: AtomicBool,
    /// hyper wrote after parking began: it was not between messages, so
    /// the connection closes instead.
    pub(super) wrote_while_parking: AtomicBool,
    /// Writes to the socket that took bytes (see [`Activity::note_write`]).
    writes: AtomicU64,
    /// The last write found the socket full: the client reads no faster.
    write_blocked: AtomicBool,
    /// The client's socket (for [`unacked`]), -1 if none is known.
    fd: RawFd,
    /// HTTP/2 responses waiting for the client's window.
    pub(super) window_stalls: WindowStalls,
}

impl Default for Activity {
    fn default() -> Self {
        Self::for_socket(-1)
    }
}

impl Activity {
    /// The activity of the connection on socket `fd`, which stays open as
    /// long as the connection's serve loop runs.
    pub(super) fn for_socket(fd: RawFd) -> Self {
        Self {
            requests: InFlight::default(),
            http2: Default::default(),
            draining: Default::default(),
            unparkable: Default::default(),
            parking: Default::default(),
            wrote_while_parking: Default::default(),
            writes: Default::default(),
            write_blocked: Default::default(),
            fd,
            window_stalls: WindowStalls::new(monotonic_ns() / 1_000_000),
        }
    }
}

/// Counts one request in flight until dropped: held by its response body,
/// so a response still streaming keeps its connection busy.
pub(super) struct Busy {
    activity: Arc<Activity>,
    version: hyper::Version,
    /// HTTP/2: the request's slot in [`WindowStalls`].
    stall_slot: Option<usize>,
}

impl Busy {
    pub(super) fn version(&self) -> hyper::Version {
        self.version
    }

    pub(super) fn draining(&self) -> bool {
        self.activity.draining.load(Relaxed)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(slot) = self.stall_slot {
            self.activity.window_stalls.release(slot);
        }
        self.activity.requests.end();
    }
}

/// hyper's executor for one connection's HTTP/2 streams: spawns each on
/// tokio, as `TokioExecutor` does, and hands [`WindowStalls`] the task of
/// the stream just accepted, so that a stream stalled behind the client's
/// window can be reset alone.
#[derive(Clone)]
pub(super) struct StreamExec(pub(super) Arc<Activity>);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        let task = tokio::spawn(task);
        self.0.window_stalls.adopt(task.abort_handle());
    }
}

impl Activity {
    /// A request begins; `parkable`: hyper is between messages again as
    /// soon as its response is written (no body to read after it).
    pub(super) fn begin(self: &Arc<Self>, version: hyper::Version, parkable: bool) -> Busy {
        self.requests.begin();
        let http2 = version == hyper::Version::HTTP_2;
        if http2 {
            self.http2.store(true, Relaxed);
        }
        if !parkable {
            self.unparkable.store(true, Relaxed);
        }
        Busy {
            activity: self.clone(),
            version,
            stall_slot: http2.then(|| self.window_stalls.claim()),
        }
    }

    pub(super) fn is_http2(&self) -> bool {
        self.http2.load(Relaxed)
    }

    pub(super) fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Relaxed);
    }

    /// How long nothing has happened on the connection (zero while busy).
    pub(super) fn idle_for(&self, now_ns: u64) -> Duration {
        self.requests.idle_for(now_ns)
    }

    /// A head arrived: the connection is not idle from here (a parked one
    /// was idle since its last response, and would otherwise look idle to
    /// the loop that now serves its head).
    pub(super) fn touch(&self) {
        self.requests.touch();
    }

    /// Idle for `after` with only bodiless, non-upgrade requests so far.
    pub(super) fn may_park(&self, after: Duration, now_ns: u64) -> bool {
        !self.unparkable.load(Relaxed) && !self.is_http2() && self.idle_for(now_ns) >= after
    }

    /// Where a blocked response stands, if a response is in flight and
    /// the last write found the socket full; `None` otherwise: the writes
    /// that took bytes so far, and the bytes the socket holds that the
    /// client has not acknowledged. The serve loop drops a connection
    /// that stays where it stands for `request_timeout`: a client that
    /// reads nothing of its response (a zero window) would otherwise hold
    /// its connection, its slot and an upstream connection forever. A
    /// slow reader moves the second even while the socket stays too full
    /// to be written (the kernel wakes a writer only once a third of its
    /// buffer is free).
    pub(super) fn blocked_writes(&self) -> Option<(u64, i32)> {
        let blocked = self.requests.any() && self.write_blocked.load(Relaxed);
        blocked.then(|| (self.writes.load(Relaxed), unacked(self.fd).unwrap_or(-1)))
    }

    /// Counts what a write to the client's socket came to (see
    /// [`Activity::blocked_writes`]): two stores a write, no clock read.
    pub(super) fn note_write(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Pending => self.write_blocked.store(true, Relaxed),
            Poll::Ready(Ok(n)) if *n > 0 => {
                let writes = self.writes.load(Relaxed);
                self.writes.store(writes.wrapping_add(1), Relaxed);
                self.write_blocked.store(false, Relaxed);
            }
            Poll::Ready(_) => {}
        }
    }

    /// Parking begins (true) or the connection is served again (false).
    pub(super) fn set_parking(&self, parking: bool) {
        self.wrote_while_parking.store(false, Relaxed);
        self.parking.store(parking, Relaxed);
    }
}

/// A response body holding its request's [`Busy`] until hyper drops it
/// (written, or the connection gone); an HTTP/2 one notes its waits for
/// the client's window ([`WindowStalls`]).
pub(super) struct Tracked<B> {
    body: B,
    busy: Busy,
    /// HTTP/2: whether it waits in [`WindowStalls`] (in `busy`'s slot).
    waiting: bool,
    /// HTTP/2: what is left of the body's last frame, handed over in
    /// pieces (see [`PIECE`], [`HOLD_BACK_OVER`]).
    held: Option<Bytes>,
}

/// HTTP/2 data goes to hyper at most this much at a time (h2's own frame
/// size). hyper asks for more once the stream's send buffer is below 64
/// KiB; handed a 400 KB chunk (hyper's HTTP/1 client reads that much), a
/// client reading a few KB/s would wait that long for it to drain and be
/// taken for a stalled one. A piece drains in a bounded wait.
const PIECE: usize = 16 << 10;

/// A final HTTP/2 frame longer than this goes out as two: all of it but
/// its last byte, then that byte. hyper ends a stream's body once h2 has
/// taken its last frame, whatever of it the client's window has let out,
/// so a client granting a window of 1 byte had each stream's last frame
/// held in memory with no [`WindowStalls`] wait to see. hyper holds the
/// byte, and asks for what follows it, only once the window has room:
/// that wait shows.
/// A shorter frame stays behind a shut window (about what the stream's
/// own state costs); splitting every response would add a frame to each.
const HOLD_BACK_OVER: usize = 1024;

impl<B> Tracked<B> {
    pub(super) fn new(body: B, busy: Busy) -> Self {
        Self {
            body,
            busy,
            waiting: false,
            held: None,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(slot) = this.busy.stall_slot else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        let stalls = &this.busy.activity.window_stalls;
        if this.waiting {
            stalls.set_waiting(slot, false);
            this.waiting = false;
        }
        let polled = match this.held.take() {
            Some(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        let last = this.body.is_end_stream();
        let polled = polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| frame.map_data(|data| piece(data, last, &mut this.held)))
            })
        });
        if let Poll::Ready(Some(Ok(_))) = &polled {
            stalls.set_waiting(slot, true);
            this.waiting = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |h| h.len() as u64);
        let inner = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

/// The piece of `data` to hand hyper now, the rest put in `held`: at most
/// [`PIECE`] bytes, and of the body's `last` frame, a last byte on its own
/// when it is longer than [`HOLD_BACK_OVER`].
fn piece(mut data: Bytes, last: bool, held: &mut Option<Bytes>) -> Bytes {
    if data.len() > PIECE {
        *held = Some(data.split_off(PIECE));
    } else if last && data.len() > HOLD_BACK_OVER {
        *held = Some(data.split_off(data.len() - 1));
    }
    data
}

/// Bytes socket `fd` holds that its peer has not acknowledged
/// (`TIOCOUTQ`); `None` without a socket or if the call fails.
fn unacked(fd: RawFd) -> Option<i32> {
    if fd < 0 {
        return None;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is the connection's socket, open while its serve loop
    // asks (see `Activity::for_socket`); `queued` is a valid out-parameter
    // of the size TIOCOUTQ writes.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, std::ptr::from_mut(&mut queued)) };
    (rc == 0).then_some(queued)
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    /// The frames `version`'s response body of `len` bytes goes out in.
    fn frames(version: hyper::Version, len: usize) -> Vec<usize> {
        let activity = Arc::new(Activity::default());
        let body = Full::new(Bytes::from(vec![b'x'; len]));
        let mut tracked = Tracked::new(body, activity.begin(version, true));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut tracked).poll_frame(&mut cx) {
            sizes.push(frame.into_data().map_or(0, |d| d.len()));
            if tracked.is_end_stream() {
                break;
            }
        }
        assert!(tracked.is_end_stream());
        sizes
    }

    #[test]
    fn http2_data_goes_in_pieces_and_a_large_end_with_its_last_byte_alone() {
        assert_eq!(frames(hyper::Version::HTTP_2, 4000), [3999, 1]);
        let big = frames(hyper::Version::HTTP_2, 40_000);
        assert_eq!(big, [PIECE, PIECE, 40_000 - 2 * PIECE - 1, 1]);
        assert_eq!(
            frames(hyper::Version::HTTP_2, HOLD_BACK_OVER),
            [HOLD_BACK_OVER]
        );
        assert_eq!(frames(hyper::Version::HTTP_11, 4000), [4000]);
    }

    /// A frame handed over leaves its stream waiting, as the serve loop's
    /// tick sees it, until hyper asks for the next: for a large final
    /// frame, until the client's window has taken all of it but the held
    /// byte. A done response stops counting.
    #[test]
    fn an_http2_frame_handed_over_waits_until_the_next_is_asked_for() {
        let activity = Arc::new(Activity::default());
        let body = Full::new(Bytes::from(vec![b'x'; 4000]));
        let mut tracked = Tracked::new(body, activity.begin(hyper::Version::HTTP_2, true));
        let now = std::cell::Cell::new(1_000);
        let stalled = || {
            now.set(now.get() + 10_000);
            activity.window_stalls.tick(now.get(), 1_000, 500)
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut next = || match Pin::new(&mut tracked).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().map_or(0, |d| d.len()),
            _ => panic!("no frame"),
        };
        assert!(!stalled(), "nothing handed over yet");
        assert_eq!(next(), 3999);
        assert!(stalled(), "the frame's window never came");
        assert!(stalled(), "still waiting while hyper does not ask");
        assert_eq!(next(), 1);
        assert!(stalled(), "the held byte waits like any frame");
        drop(tracked);
        assert!(!stalled(), "a response done with is no wait");
    }
}
