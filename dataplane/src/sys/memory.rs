//! Handing freed heap memory back to the kernel: a long-running daemon
//! whose control requests run on short-lived threads must not keep what
//! one request allocated for a moment.

/// Gives the memory malloc holds free, in every arena, back to the kernel.
///
/// aya 0.14 reads and parses the kernel's BTF (/sys/kernel/btf/vmlinux,
/// 5.5 MB here) every time an eBPF object is loaded (`EbpfLoader::new`
/// does it, and there is no other constructor): about 9 MB allocated and
/// freed again. glibc keeps freed memory in the arena of the thread that
/// freed it, and a control request runs on whichever tokio blocking thread
/// is free, so each new thread's arena kept its own 9 MB (the RSS soak test
/// saw the daemon grow by 9 MB at a time). Called after each load; it costs
/// about a millisecond, and loads happen at attach and probe time only.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim returns free pages of malloc's own arenas to the
    // kernel; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocations of this size or more get a mapping of their own, returned
/// to the kernel when freed.
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Fixes malloc's threshold for serving an allocation by a mapping of its
/// own. glibc raises it after each large free (up to 32 MB), after which a
/// large allocation comes from, and stays in, the arena of the thread that
/// made it; a fixed threshold keeps large, short-lived buffers (aya's BTF,
/// see [`release_freed_memory`]) from settling in per-thread arenas. Call
/// it once, before threads start.
pub fn keep_large_allocations_apart() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a malloc tunable; no allocation is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
