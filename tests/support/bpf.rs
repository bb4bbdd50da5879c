//! `BPF_PROG_TEST_RUN` on a pinned program, straight through the `bpf`
//! syscall: microseconds per frame, where `bpftool prog run` costs a
//! process per frame (the property test runs thousands).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The leading fields of `union bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out prefix of `bpf_attr`
    // and its size is passed; the kernel zero-extends the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A pinned program opened for test runs.
pub struct TestRunner(OwnedFd);

impl TestRunner {
    pub fn open(pin: &Path) -> io::Result<Self> {
        let path = CString::new(pin.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pin path"))?;
        let mut attr = ObjGet {
            pathname: path.as_ptr() as u64,
            ..ObjGet::default()
        };
        let fd = bpf(BPF_OBJ_GET, &mut attr)?;
        // SAFETY: the kernel just returned this fd to us.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// The program's return value for one run over `frame` (for XDP:
    /// 1 = drop, 2 = pass). Frames shorter than Ethernet are refused.
    pub fn run(&self, frame: &[u8]) -> io::Result<u32> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut attr = TestRun {
            prog_fd: self.0.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_size_out: out.len() as u32,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..TestRun::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(attr.retval)
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// The leading fields of `union bpf_attr` for map element commands.
#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A pinned map opened for element reads and writes straight through the
/// syscall: microseconds, where the CLI costs a process (a test racing a
/// kernel deadline needs the write and the next packet close together).
pub struct PinnedMap(OwnedFd);

impl PinnedMap {
    pub fn open(pin: &Path) -> io::Result<Self> {
        Ok(Self(TestRunner::open(pin)?.0))
    }

    /// The value under `key`, `N` bytes.
    pub fn get<const N: usize>(&self, key: &[u8]) -> io::Result<[u8; N]> {
        let mut value = [0u8; N];
        let mut attr = MapElem {
            map_fd: self.0.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..MapElem::default()
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
        Ok(value)
    }

    /// Creates or replaces the value under `key`.
    pub fn set(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let mut attr = MapElem {
            map_fd: self.0.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            ..MapElem::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}
