//! Carrying entries between maps of different shapes, on real kernel maps
//! (skipped without the privilege to create them).
#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

const BPF_MAP_CREATE: libc::c_long = 0;

#[repr(C)]
struct CreateAttr {
    shape: MapShape,
}

fn create(shape: MapShape) -> Option<OwnedFd> {
    let mut attr = CreateAttr { shape };
    match sys_bpf(BPF_MAP_CREATE, &mut attr) {
        // SAFETY: BPF_MAP_CREATE returned a new descriptor that we own.
        Ok(fd) => Some(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) }),
        Err(error) => {
            eprintln!("SKIPPED: cannot create BPF maps here ({error})");
            None
        }
    }
}

fn hash(value_size: u32, max_entries: u32) -> MapShape {
    MapShape {
        map_type: map_type::HASH,
        key_size: 4,
        value_size,
        max_entries,
        map_flags: 0,
    }
}

fn put(fd: &OwnedFd, key: u32, value: &[u8]) {
    let mut value = value.to_vec();
    elem(
        BPF_MAP_UPDATE_ELEM,
        fd.as_fd(),
        Some(&key.to_ne_bytes()),
        &mut value,
    )
    .unwrap();
}

#[test]
fn a_grown_value_is_zero_padded_and_the_shape_reads_back() {
    let (old_shape, new_shape) = (hash(8, 16), hash(12, 16));
    let Some(old) = create(old_shape) else { return };
    let new = create(new_shape).unwrap();
    assert_eq!(map_shape(old.as_fd()).unwrap(), old_shape);
    put(&old, 1, &[1; 8]);
    put(&old, 2, &[2; 8]);
    let copied = copy_entries(old.as_fd(), old_shape, new.as_fd(), new_shape).unwrap();
    assert_eq!(copied, (2, 0));
    let value = lookup(new.as_fd(), new_shape, &2u32.to_ne_bytes()).unwrap();
    assert_eq!(value, [2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0]);
}

#[test]
fn a_shrunk_map_takes_what_fits_and_counts_the_rest() {
    let (old_shape, new_shape) = (hash(8, 16), hash(4, 2));
    let Some(old) = create(old_shape) else { return };
    let new = create(new_shape).unwrap();
    for key in 0..5 {
        put(&old, key, &[7; 8]);
    }
    let copied = copy_entries(old.as_fd(), old_shape, new.as_fd(), new_shape).unwrap();
    assert_eq!(copied, (2, 3));
}

#[test]
fn a_per_cpu_map_is_not_read_into_one_value() {
    // The kernel writes one (8-byte aligned) value per possible CPU: a
    // buffer of `value_size` would overflow.
    let shape = MapShape {
        map_type: map_type::PERCPU_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    let Some(map) = create(shape) else { return };
    assert!(lookup(map.as_fd(), shape, &0u32.to_ne_bytes()).is_err());
    let plain = hash(4, 1);
    assert!(copy_entries(map.as_fd(), shape, create(plain).unwrap().as_fd(), plain).is_err());
}

#[test]
fn a_key_shorter_than_the_map_s_is_refused() {
    // The kernel would read `key_size` bytes past the end of ours.
    let shape = MapShape {
        key_size: 16,
        ..hash(4, 1)
    };
    let Some(map) = create(shape) else { return };
    let error = lookup(map.as_fd(), shape, &0u32.to_ne_bytes()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
}
