//! Large memory copies on AMD processors: hub and agent restart themselves
//! once, at startup, with glibc told not to use `rep movsb` for them.
//!
//! Every byte of a proxied body is copied four times in user space at each
//! end (rustls's plaintext in and out, the gRPC frame encode or decode),
//! in blocks of 16-128 KiB. glibc up to 2.38 copies blocks above 2 KiB
//! with `rep movsb` on every CPU that advertises ERMS; on AMD Zen 3/4 that
//! instruction is several times slower when source and destination share
//! their offset within a 4 KiB page (glibc bug 30994), which allocator
//! buffers of these sizes often do. Later glibc versions stop preferring
//! `rep movsb` on AMD for exactly this reason. Measured on the bench
//! machine (AMD EPYC, glibc 2.36): `memmove` was 35% of the hub's and the
//! agent's CPU while moving a LIST, and hub + agent CPU per MB fell from
//! 3.9 to 3.3 ms (LIST over HTTP/2) and from 3.4 to 2.5 ms (upgraded
//! stream) with the vector loop instead (docs/benchmarks.md, "Issue 12,
//! second round").
//!
//! glibc reads its tunables only when a process starts, hence the re-exec:
//! same binary, same arguments and environment, same process id, plus
//! [`TUNABLE`] in `GLIBC_TUNABLES`. Nothing happens on other CPUs or
//! systems, when `GLIBC_TUNABLES` already names the threshold (so setting
//! it, to any value, opts out), or when the exec fails (the process then
//! simply runs untuned).

/// The glibc tunable that decides from which size `memcpy` and `memmove`
/// use `rep movsb`; set to the largest value glibc accepts in practice, so
/// they always use the vector loop (non-temporal stores still take over
/// for copies beyond glibc's own, much larger threshold).
pub const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=2147483647";

/// The environment variable glibc reads its tunables from.
const TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// The tunable's name, as it appears in `GLIBC_TUNABLES`.
const TUNABLE_NAME: &str = "x86_rep_movsb_threshold";

/// What `/proc/cpuinfo` says on AMD processors.
const AMD_VENDOR: &str = "AuthenticAMD";

/// Restarts the current process with [`TUNABLE`] added to `GLIBC_TUNABLES`
/// when that helps (see the module documentation); returns when it does not
/// or cannot. Call it first thing in `main`, before any other thread or
/// file descriptor exists that matters.
pub fn reexec_if_useful() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        use std::os::unix::process::CommandExt;

        let current = std::env::var(TUNABLES_VAR).unwrap_or_default();
        if current.contains(TUNABLE_NAME) || !is_amd() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        // `exec` returns only when it failed: run untuned then.
        let _failed = command.args(args).env(TUNABLES_VAR, with_tunable(&current)).exec();
    }
}

/// `GLIBC_TUNABLES` with [`TUNABLE`] appended (tunables are `:`-separated).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")), allow(dead_code))]
fn with_tunable(current: &str) -> String {
    if current.is_empty() { TUNABLE.to_owned() } else { format!("{current}:{TUNABLE}") }
}

/// Whether this is an AMD processor, by `/proc/cpuinfo`.
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn is_amd() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").map(|info| vendor_is_amd(&info)).unwrap_or(false)
}

/// Whether a `/proc/cpuinfo` text names AMD as the vendor.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")), allow(dead_code))]
fn vendor_is_amd(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("vendor_id"))
        .and_then(|l| l.split(':').nth(1))
        .is_some_and(|v| v.trim() == AMD_VENDOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_to_existing_tunables() {
        assert_eq!(with_tunable(""), TUNABLE);
        assert_eq!(with_tunable("glibc.malloc.arena_max=2"), format!("glibc.malloc.arena_max=2:{TUNABLE}"));
        assert!(TUNABLE.contains(TUNABLE_NAME));
    }

    #[test]
    fn recognises_the_vendor() {
        assert!(vendor_is_amd("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"));
        assert!(!vendor_is_amd("processor\t: 0\nvendor_id\t: GenuineIntel\n"));
        assert!(!vendor_is_amd(""));
    }
}
