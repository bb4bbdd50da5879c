//! Direct packet reads as whole-word loads. The BPF backend splits every
//! unaligned load into byte loads (a 4-byte address costs 4 loads and 6
//! shifts and ors), and packet headers are rarely aligned; the kernel allows
//! misaligned packet reads, so one load instruction per word, written in
//! inline assembly, reads the same bytes without pretending to Rust that
//! the pointer is aligned.
use core::arch::asm;

/// Word-aligned scratch the loaded words are stored into.
#[repr(C, align(8))]
struct Aligned<const N: usize>([u8; N]);

/// The `N` bytes at `address`, which the caller has bounds-checked against
/// the packet end in a way the verifier sees.
///
/// # Safety
/// `address..address + N` must lie inside the packet.
#[inline(always)]
pub unsafe fn read<const N: usize>(address: usize) -> [u8; N] {
    let mut out = Aligned([0u8; N]);
    let base = out.0.as_mut_ptr();
    let mut at = 0;
    while at + 8 <= N {
        let word: u64;
        // SAFETY: inside the packet (the caller's contract).
        unsafe {
            asm!("{0} = *(u64 *)({1} + 0)", lateout(reg) word, in(reg) address + at,
                 options(pure, readonly, nostack, preserves_flags));
            // Naturally aligned: `out` is 8-aligned and `at` a multiple of 8.
            core::ptr::write(base.add(at).cast::<u64>(), word);
        }
        at += 8;
    }
    if at + 4 <= N {
        let word: u64;
        // SAFETY: as above; `at` is a multiple of 4 here.
        unsafe {
            asm!("{0} = *(u32 *)({1} + 0)", lateout(reg) word, in(reg) address + at,
                 options(pure, readonly, nostack, preserves_flags));
            core::ptr::write(base.add(at).cast::<u32>(), word as u32);
        }
        at += 4;
    }
    if at + 2 <= N {
        let word: u64;
        // SAFETY: as above; `at` is a multiple of 2 here.
        unsafe {
            asm!("{0} = *(u16 *)({1} + 0)", lateout(reg) word, in(reg) address + at,
                 options(pure, readonly, nostack, preserves_flags));
            core::ptr::write(base.add(at).cast::<u16>(), word as u16);
        }
        at += 2;
    }
    if at < N {
        // SAFETY: as above.
        unsafe { *base.add(at) = core::ptr::read((address + at) as *const u8) };
    }
    out.0
}
