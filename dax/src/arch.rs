//! Architecture-specific pieces: the data-cache aliasing table and the
//! cache-line write-back / fence primitives.

use serde::Serialize;
use std::fmt;

/// Target architectures (Rust `target_arch` names, plus kernel names with no
/// Rust target) whose data cache may alias, mirroring the kernel's
/// `cpu_dcache_is_aliasing()`: the kernel refuses DAX on them (`alloc_dax()`
/// returns `-EOPNOTSUPP`). 32-bit arm, mips, sparc, parisc, sh, m68k, csky,
/// xtensa, nios2 and arc are treated as aliasing (several have non-aliasing
/// variants, but the kernel cannot promise it in general and neither can we).
const ALIASING_ARCHES: &[&str] = &[
    "arm", "mips", "mips64", "mips32r6", "mips64r6", "sparc", "sparc64", "parisc", "sh", "m68k",
    "csky", "xtensa", "nios2", "arc",
];

/// Whether the data cache of architecture `arch` (a `target_arch` /
/// `std::env::consts::ARCH` name) may alias. x86, x86-64, arm64 (`aarch64`),
/// riscv, powerpc, s390x and loongarch64 never alias; unknown names are
/// treated as non-aliasing (the kernel's generic default).
pub fn dcache_is_aliasing_for_arch(arch: &str) -> bool {
    ALIASING_ARCHES.contains(&arch)
}

/// Compile-time equivalent of the kernel's `cpu_dcache_is_aliasing()` for the
/// target architecture.
pub const fn cpu_dcache_is_aliasing() -> bool {
    cfg!(any(
        target_arch = "arm",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "mips32r6",
        target_arch = "mips64r6",
        target_arch = "sparc",
        target_arch = "sparc64",
        target_arch = "m68k",
        target_arch = "csky",
        target_arch = "xtensa",
    ))
}

/// Whether this build can make stores durable on persistent memory (cache
/// write-back + fence implemented). Only x86-64 for now; on other
/// architectures [`crate::probe`] reports
/// [`crate::UnsupportedReason::FlushNotImplemented`].
pub(crate) const FLUSH_IMPLEMENTED: bool = cfg!(target_arch = "x86_64");

/// How dirty cache lines are written back to the persistence domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushInstr {
    /// `clwb`: write back, line may stay cached (best).
    Clwb,
    /// `clflushopt`: write back and invalidate, weakly ordered.
    Clflushopt,
    /// `clflush`: write back and invalidate, serialising (slowest).
    Clflush,
    /// No flush needed (eADR: the CPU caches are in the persistence domain)
    /// or none available on this architecture; only a store fence is issued.
    FenceOnly,
}

impl fmt::Display for FlushInstr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlushInstr::Clwb => "clwb",
            FlushInstr::Clflushopt => "clflushopt",
            FlushInstr::Clflush => "clflush",
            FlushInstr::FenceOnly => "fence only",
        })
    }
}

/// Cache-line size used as the flush stride: the CPUID-reported `clflush`
/// line size on x86-64 (64 on every current CPU), 64 elsewhere. Flushing with
/// a stride smaller than the real line is merely redundant, never incorrect.
pub(crate) fn cache_line_size() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LINE: OnceLock<usize> = OnceLock::new();
        *LINE.get_or_init(|| {
            // SAFETY: cpuid leaf 1 exists on every x86-64 CPU; the instruction
            // has no side effects beyond writing the returned registers.
            #[allow(unused_unsafe)]
            let r = unsafe { core::arch::x86_64::__cpuid(1) };
            let line = ((r.ebx >> 8) & 0xff) as usize * 8;
            if line == 0 {
                64
            } else {
                line.min(64)
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        64
    }
}

/// The best flush instruction this CPU has (detected once per call site via
/// CPUID; callers cache it in the mapping).
pub(crate) fn best_flush_instr() -> FlushInstr {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__cpuid, __cpuid_count, __get_cpuid_max};
        // SAFETY: cpuid is available on every x86-64 CPU and only reads
        // identification registers. Leaf 7 is queried only when the maximum
        // basic leaf reported by leaf 0 covers it.
        #[allow(unused_unsafe)]
        let (leaf1_edx, leaf7_ebx) = unsafe {
            let (max, _) = __get_cpuid_max(0);
            let l1 = __cpuid(1).edx;
            let l7 = if max >= 7 { __cpuid_count(7, 0).ebx } else { 0 };
            (l1, l7)
        };
        if leaf7_ebx & (1 << 24) != 0 {
            FlushInstr::Clwb
        } else if leaf7_ebx & (1 << 23) != 0 {
            FlushInstr::Clflushopt
        } else if leaf1_edx & (1 << 19) != 0 {
            FlushInstr::Clflush
        } else {
            FlushInstr::FenceOnly
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        FlushInstr::FenceOnly
    }
}

/// Write back every cache line overlapping `[ptr, ptr + len)` with `instr`.
/// Does not fence; call [`store_fence`] afterwards.
///
/// # Safety
/// `[ptr, ptr + len)` must lie within a live mapping of this process.
pub(crate) unsafe fn flush_range(ptr: *const u8, len: usize, instr: FlushInstr) {
    if len == 0 || instr == FlushInstr::FenceOnly {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let line = cache_line_size();
        let start = (ptr as usize) & !(line - 1);
        let end = ptr as usize + len;
        let mut p = start;
        while p < end {
            let lp = p as *const u8;
            // SAFETY: `lp` is inside a cache line that overlaps the caller's
            // range, which lies in a live mapping (caller contract); a cache
            // line never straddles a page, so the line is mapped too. These
            // instructions only write back / invalidate the line, they do not
            // modify memory contents.
            unsafe {
                match instr {
                    FlushInstr::Clwb => core::arch::asm!(
                        "clwb [{0}]",
                        in(reg) lp,
                        options(nostack, preserves_flags)
                    ),
                    FlushInstr::Clflushopt => core::arch::asm!(
                        "clflushopt [{0}]",
                        in(reg) lp,
                        options(nostack, preserves_flags)
                    ),
                    FlushInstr::Clflush => core::arch::x86_64::_mm_clflush(lp),
                    FlushInstr::FenceOnly => {}
                }
            }
            p += line;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Flushing is not implemented for this architecture yet (probe
        // reports FlushNotImplemented, so only test mappings get here).
        let _ = ptr;
    }
}

/// Order all previous stores (including non-temporal stores and cache-line
/// write-backs) before any later store: `sfence` on x86-64, a full fence
/// elsewhere.
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: sfence is part of SSE, which every x86-64 CPU has; it has
        // no memory-safety preconditions.
        unsafe { core::arch::x86_64::_mm_sfence() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Non-temporal copy (or zero fill when `src` is `None`) of whole cache
/// lines: `dst` must be 64-byte aligned and `len` a multiple of 64. Does not
/// fence.
///
/// # Safety
/// `[dst, dst + len)` must be valid for writes inside a live mapping and, if
/// given, `[src, src + len)` valid for reads and not overlapping `dst`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn nt_copy_lines(dst: *mut u8, src: Option<*const u8>, len: usize) {
    use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_setzero_si128, _mm_stream_si128};
    debug_assert_eq!(dst as usize % 64, 0);
    debug_assert_eq!(len % 64, 0);
    let mut off = 0;
    while off < len {
        for i in 0..4 {
            let o = off + i * 16;
            // SAFETY: `dst + o` is 16-byte aligned (dst is 64-aligned, o is a
            // multiple of 16) and within the caller's writable range; `src +
            // o` is within the caller's readable range (unaligned loads are
            // allowed). SSE2 is baseline on x86-64.
            unsafe {
                let v = match src {
                    Some(s) => _mm_loadu_si128(s.add(o) as *const __m128i),
                    None => _mm_setzero_si128(),
                };
                _mm_stream_si128(dst.add(o) as *mut __m128i, v);
            }
        }
        off += 64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliasing_table() {
        for a in [
            "x86_64",
            "x86",
            "aarch64",
            "riscv64",
            "powerpc64",
            "s390x",
            "loongarch64",
        ] {
            assert!(!dcache_is_aliasing_for_arch(a), "{a}");
        }
        for a in [
            "arm", "mips", "mips64", "sparc", "sparc64", "parisc", "sh", "m68k", "csky", "xtensa",
            "nios2", "arc",
        ] {
            assert!(dcache_is_aliasing_for_arch(a), "{a}");
        }
        assert_eq!(
            cpu_dcache_is_aliasing(),
            dcache_is_aliasing_for_arch(std::env::consts::ARCH)
        );
        #[cfg(target_arch = "x86_64")]
        {
            const A: bool = cpu_dcache_is_aliasing();
            assert_eq!(A, dcache_is_aliasing_for_arch("x86_64"));
        }
    }

    #[test]
    fn cache_line_is_power_of_two() {
        let l = cache_line_size();
        assert!(l.is_power_of_two() && (32..=64).contains(&l), "{l}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn flush_instr_detected() {
        // Every x86-64 CPU has at least clflush (it is part of SSE2).
        assert_ne!(best_flush_instr(), FlushInstr::FenceOnly);
    }
}
