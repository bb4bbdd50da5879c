//! The few `bpf(2)` commands aya 0.14 does not expose for what a restart
//! needs: map and link info from a pin, entries as raw bytes (to carry a map
//! whose value layout changed into its replacement), and forcing a link off
//! its interface.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Map types (`enum bpf_map_type`) whose entries we know how to copy.
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LRU_PERCPU_HASH: u32 = 10;
    pub const PERCPU_CGROUP_STORAGE: u32 = 21;
    pub const PERF_EVENT_ARRAY: u32 = 4;
    pub const RINGBUF: u32 = 27;

    /// Per-CPU values (one per possible CPU): not carried over a layout change.
    pub const fn per_cpu(kind: u32) -> bool {
        matches!(
            kind,
            PERCPU_HASH | PERCPU_ARRAY | LRU_PERCPU_HASH | PERCPU_CGROUP_STORAGE
        )
    }

    /// Event channels belong to the program that created them.
    pub const fn channel(kind: u32) -> bool {
        matches!(kind, PERF_EVENT_ARRAY | RINGBUF)
    }

    /// Can entries of `old` be written into a map of type `new`?
    pub const fn entries_fit(old: u32, new: u32) -> bool {
        old == new || matches!((old, new), (HASH, LRU_HASH) | (LRU_HASH, HASH))
    }
}

/// The kernel's view of a map (`struct bpf_map_info`, its stable head).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

/// The kernel's view of a link (`struct bpf_link_info`, XDP variant).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    pub id: u32,
    pub prog_id: u32,
    /// 0 once its interface is gone (the link is defunct).
    pub ifindex: u32,
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out `union bpf_attr` member
    // for `cmd`, and every pointer in it outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn raw(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Opens the object pinned at `path` (a map, program or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the object `fd` (a map, program or link) at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: raw(fd),
        file_flags: 0,
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// The kernel id of a map, program or link (each info struct starts with
/// its type, then its id).
pub fn object_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(info::<16>(fd)?[1])
}

fn info<const N: usize>(fd: BorrowedFd<'_>) -> io::Result<[u32; N]> {
    let mut buffer = [0u32; N];
    let mut attr = InfoAttr {
        bpf_fd: raw(fd),
        info_len: u32::try_from(N * 4).unwrap_or(0),
        info: buffer.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(buffer)
}

pub fn map_shape(fd: BorrowedFd<'_>) -> io::Result<MapShape> {
    // type, id, key_size, value_size, max_entries, map_flags, name[16], ...
    let info = info::<24>(fd)?;
    Ok(MapShape {
        map_type: info[0],
        key_size: info[2],
        value_size: info[3],
        max_entries: info[4],
        map_flags: info[5],
    })
}

/// The link pinned at `path`, if it is an XDP link.
pub fn link_state(fd: BorrowedFd<'_>) -> io::Result<Option<LinkState>> {
    const BPF_LINK_TYPE_XDP: u32 = 6;
    // type, id, prog_id, (pad), union at byte 16: xdp.ifindex
    let info = info::<16>(fd)?;
    Ok((info[0] == BPF_LINK_TYPE_XDP).then_some(LinkState {
        id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    }))
}

/// Detaches a link from its interface now, whoever else holds it open.
pub fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [raw(fd), 0];
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Detaches the link pinned at `path` and removes the pin. `Ok(false)`:
/// there was none.
pub fn remove_pinned_link(path: &Path) -> io::Result<bool> {
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    // A defunct link (its interface is gone) refuses; removing the pin is
    // what matters then.
    let _ = link_detach(fd.as_fd());
    std::fs::remove_file(path)?;
    Ok(true)
}

/// Largest value we read from a pinned map: ours are far smaller, and a
/// foreign pin's claimed size must not size an allocation.
const MAX_VALUE_SIZE: u32 = 64 * 1024;

/// Whether the kernel reads and writes exactly `key_size` and `value_size`
/// bytes for entries of a map of `shape` (a per-CPU map writes one value
/// per possible CPU): the buffers below are sized on that.
fn plain(shape: MapShape) -> io::Result<()> {
    if map_type::per_cpu(shape.map_type) || shape.value_size > MAX_VALUE_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot read entries of a map shaped {shape:?}"),
        ));
    }
    Ok(())
}

/// The value at `key` of the map of `shape`, as bytes (`value_size` of them).
pub fn lookup(fd: BorrowedFd<'_>, shape: MapShape, key: &[u8]) -> io::Result<Vec<u8>> {
    plain(shape)?;
    if key.len() != shape.key_size as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a {}-byte key for a map of {}-byte keys",
                key.len(),
                shape.key_size
            ),
        ));
    }
    let mut value = vec![0u8; shape.value_size as usize];
    elem(BPF_MAP_LOOKUP_ELEM, fd, Some(key), &mut value)?;
    Ok(value)
}

fn elem(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    value: &mut [u8],
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: raw(fd),
        key: key.map_or(0, |key| key.as_ptr() as u64),
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    sys_bpf(cmd, &mut attr).map(drop)
}

/// Copies every entry of `old` into `new` (same key size, not per-CPU): a
/// value is cut or padded with zeros to the new size, as fields are only
/// ever appended. Returns (copied, refused by the new map).
pub fn copy_entries(
    old: BorrowedFd<'_>,
    old_shape: MapShape,
    new: BorrowedFd<'_>,
    new_shape: MapShape,
) -> io::Result<(usize, usize)> {
    plain(old_shape)?;
    plain(new_shape)?;
    if old_shape.key_size != new_shape.key_size {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let key_size = old_shape.key_size as usize;
    let mut key: Option<Vec<u8>> = None;
    let mut next = vec![0u8; key_size];
    let mut value = vec![0u8; (old_shape.value_size.max(new_shape.value_size)) as usize];
    let (mut copied, mut refused) = (0, 0);
    // Bounded by the old map's size (plus slack for entries the kernel
    // changes while we walk an LRU map).
    for _ in 0..u64::from(old_shape.max_entries).saturating_mul(2).max(1) {
        match elem(BPF_MAP_GET_NEXT_KEY, old, key.as_deref(), &mut next) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => break,
            Err(error) => return Err(error),
        }
        value.fill(0);
        let old_value = &mut value[..old_shape.value_size as usize];
        match elem(BPF_MAP_LOOKUP_ELEM, old, Some(&next), old_value) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                key = Some(next.clone());
                continue;
            }
            Err(error) => return Err(error),
        }
        let new_value = &mut value[..new_shape.value_size as usize];
        match elem(BPF_MAP_UPDATE_ELEM, new, Some(&next), new_value) {
            Ok(()) => copied += 1,
            Err(_) => refused += 1,
        }
        key = Some(next.clone());
    }
    Ok((copied, refused))
}

#[cfg(test)]
#[path = "bpfsys_tests.rs"]
mod tests;
