//! The key index's table: open addressing with linear probing over slots
//! of one cache line each, holding everything verifying a key reads (its
//! id, its secret's SHA-256, its expiry, its client's standing and the
//! client itself), so a lookup touches one line of the table (two when it
//! probes on; neighbours, which the prefetcher fetches in pairs) and then
//! only the client's reference count. The `HashMap` it replaces touched
//! a control-byte group and an 80-byte bucket across two lines.
use std::{hash::BuildHasher, sync::Arc};

use super::{format, store::Client};

/// A key id as the table holds it: inline, compared without following a
/// pointer to a heap string.
pub(super) type KeyId = [u8; format::ID_LEN];

/// One key: 64 bytes, aligned to a cache line.
#[derive(Clone)]
#[repr(C, align(64))]
pub(super) struct Slot {
    pub secret_hash: [u8; 32],
    /// The earlier of the key's end of grace (a rotated-out key) and the
    /// client's expiry (unix seconds); `i64::MAX` when neither ends.
    pub expires_at: i64,
    /// `None`: an empty slot.
    pub client: Option<Arc<Client>>,
    pub id: KeyId,
    /// The client's `disabled`, copied (the table is rebuilt whenever the
    /// store changes).
    pub disabled: bool,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    const EMPTY: Slot = Slot {
        secret_hash: [0; 32],
        expires_at: 0,
        client: None,
        id: [0; format::ID_LEN],
        disabled: false,
    };

    /// A key's slot: the earlier of its own end and its client's. `None`
    /// for a stored id not of the key format (it could never be
    /// presented).
    pub fn new(
        key_id: &str,
        secret_hash: [u8; 32],
        expires_at: Option<i64>,
        client: &Arc<Client>,
    ) -> Option<Slot> {
        let expires_at = match (expires_at, client.expires_at) {
            (Some(key), Some(client)) => key.min(client),
            (key, client) => key.or(client).unwrap_or(i64::MAX),
        };
        Some(Slot {
            secret_hash,
            expires_at,
            client: Some(client.clone()),
            id: KeyId::try_from(key_id.as_bytes()).ok()?,
            disabled: client.disabled,
        })
    }
}

/// Fewest slots a table has (an empty one included).
const MIN_SLOTS: usize = 16;

pub(super) struct KeyTable {
    /// A power of two in length, at most two thirds full, so a probe
    /// always ends at an empty slot.
    slots: Box<[Slot]>,
    /// 64 minus log2 of the length: a hash's top bits pick the home slot.
    shift: u32,
    /// Per-table random key of the id hash.
    seed: u64,
    len: usize,
}

impl Default for KeyTable {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl KeyTable {
    /// A table of `slots` (each holding a client); a later slot with the
    /// same id as an earlier one replaces it.
    pub fn new(slots: Vec<Slot>) -> Self {
        let size = (slots.len() + slots.len() / 2 + 1)
            .next_power_of_two()
            .max(MIN_SLOTS);
        let mut table = KeyTable {
            slots: vec![Slot::EMPTY; size].into_boxed_slice(),
            shift: 64 - size.trailing_zeros(),
            seed: std::hash::RandomState::new().hash_one(0x6b65_7973_u64),
            len: 0,
        };
        for slot in slots {
            table.insert(slot);
        }
        table
    }

    /// Where a probe for `id` starts. A keyed multiply-fold, a tenth of
    /// SipHash's cost: the ids in the table are random (from the OS
    /// CSPRNG) and a client only looks ids up, never adds one, so it
    /// cannot build a long probe sequence; the random seed keeps it from
    /// aiming its lookups at the longest one there is.
    fn home(&self, id: &KeyId) -> usize {
        let mut low = [0u8; 8];
        let mut high = [0u8; 8];
        low.copy_from_slice(&id[..8]);
        high[..format::ID_LEN - 8].copy_from_slice(&id[8..]);
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let h = (u64::from_le_bytes(low) ^ self.seed).wrapping_mul(K);
        let h = (h.rotate_left(29) ^ u64::from_le_bytes(high)).wrapping_mul(K);
        (h >> self.shift) as usize
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) & (self.slots.len() - 1)
    }

    fn insert(&mut self, slot: Slot) {
        let mut i = self.home(&slot.id);
        // Bounded: the table is never full.
        for _ in 0..self.slots.len() {
            let Some(here) = self.slots.get_mut(i) else {
                return;
            };
            if here.client.is_none() {
                *here = slot;
                self.len += 1;
                return;
            }
            if here.id == slot.id {
                *here = slot;
                return;
            }
            i = self.next(i);
        }
    }

    /// Asks the CPU to start loading `id`'s home slot, so the miss
    /// overlaps the checksum that comes before the lookup (a hint: no
    /// effect on what any lookup finds).
    #[inline]
    pub fn prefetch(&self, id: &KeyId) {
        if let Some(slot) = self.slots.get(self.home(id)) {
            prefetch(slot);
        }
    }

    /// The slot of key `id` and its client. Ids are not secret (logs
    /// show them): compared as plain bytes.
    #[inline]
    pub fn get(&self, id: &KeyId) -> Option<(&Slot, &Arc<Client>)> {
        let mut i = self.home(id);
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i)?;
            let client = slot.client.as_ref()?;
            if slot.id == *id {
                return Some((slot, client));
            }
            i = self.next(i);
        }
        None
    }

    /// The occupied slots, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|slot| slot.client.is_some())
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

/// Asks the CPU to start loading the cache line at `at`.
#[inline]
pub(super) fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and
    // never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Whether two digests are equal, in constant time: every byte is read
/// and folded into one word, compared once (32 byte-wise `subtle`
/// comparisons cost three times the instructions).
pub(super) fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    let mut diff = 0u64;
    for (a, b) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
        x.copy_from_slice(a);
        y.copy_from_slice(b);
        diff |= u64::from_ne_bytes(x) ^ u64::from_ne_bytes(y);
    }
    bool::from(diff.ct_eq(&0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str) -> Arc<Client> {
        Arc::new(Client {
            id: id.into(),
            name: id.into(),
            tier: "gold".into(),
            scopes: Vec::new(),
            expires_at: None,
            disabled: false,
            is_admin: false,
            external_id: None,
            created_at: 0,
        })
    }

    fn id(n: usize) -> String {
        format!("{n:012}")
    }

    #[test]
    fn finds_every_key_and_no_other_at_any_size() {
        for count in [0, 1, 10, 11, 12, 100, 3_000] {
            let owner = client("cl_a");
            let slots = (0..count)
                .map(|n| Slot::new(&id(n), [n as u8; 32], None, &owner).unwrap())
                .collect();
            let table = KeyTable::new(slots);
            assert_eq!(table.len(), count);
            assert_eq!(table.iter().count(), count);
            assert!(table.len() * 3 <= table.slots.len() * 2, "{count}");
            for n in 0..count {
                let key = KeyId::try_from(id(n).as_bytes()).unwrap();
                let (slot, found) = table.get(&key).unwrap();
                assert_eq!(
                    (slot.secret_hash, slot.expires_at),
                    ([n as u8; 32], i64::MAX)
                );
                assert!(Arc::ptr_eq(found, &owner));
            }
            for n in count..count + 50 {
                assert!(table
                    .get(&KeyId::try_from(id(n).as_bytes()).unwrap())
                    .is_none());
            }
        }
    }

    #[test]
    fn digests_are_equal_only_when_every_byte_is() {
        let a = [7u8; 32];
        assert!(digests_equal(&a, &a));
        for at in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[at] ^= 1 << bit;
                assert!(!digests_equal(&a, &b), "{at} {bit}");
            }
        }
    }

    #[test]
    fn a_later_slot_with_the_same_id_replaces_the_earlier() {
        let (a, b) = (client("cl_a"), client("cl_b"));
        let table = KeyTable::new(vec![
            Slot::new(&id(1), [1; 32], None, &a).unwrap(),
            Slot::new(&id(1), [2; 32], Some(5), &b).unwrap(),
        ]);
        assert_eq!(table.len(), 1);
        let (slot, found) = table
            .get(&KeyId::try_from(id(1).as_bytes()).unwrap())
            .unwrap();
        assert_eq!((slot.secret_hash, slot.expires_at), ([2; 32], 5));
        assert!(Arc::ptr_eq(found, &b));
    }

    #[test]
    fn a_slot_ends_with_the_earlier_of_key_and_client() {
        let mut owner = client("cl_a");
        Arc::make_mut(&mut owner).expires_at = Some(50);
        let slot = |at| Slot::new(&id(1), [0; 32], at, &owner).unwrap().expires_at;
        assert_eq!((slot(None), slot(Some(40)), slot(Some(60))), (50, 40, 50));
        assert!(Slot::new("short", [0; 32], None, &owner).is_none());
    }
}
