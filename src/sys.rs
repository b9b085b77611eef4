//! Process hardening: the only `unsafe` in the binary, each call wrapped and commented.
//!
//! Owns: turning off core dumps and ptrace-ability of the daemon, and locking its memory so
//! keys and secrets are never swapped out. Must never: do anything else.
#![allow(unsafe_code)]

/// Make the process non-dumpable and forbid core files. Returns what failed, if anything.
pub fn harden() -> Vec<String> {
    let mut failed = Vec::new();
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only and touches no memory of
    // ours; it makes /proc/self/mem and core dumps unavailable to non-root users.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        failed.push(format!(
            "prctl(PR_SET_DUMPABLE): {}",
            std::io::Error::last_os_error()
        ));
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid, initialised rlimit that outlives the call; setrlimit only reads it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    if rc != 0 {
        failed.push(format!(
            "setrlimit(RLIMIT_CORE): {}",
            std::io::Error::last_os_error()
        ));
    }
    failed
}

/// Lock all current and future pages in RAM (no secret reaches swap). Only when the process
/// may lock without limit (CAP_IPC_LOCK as root, or an unlimited RLIMIT_MEMLOCK): with a
/// small limit, MCL_FUTURE would make later allocations fail. Returns why not, if not.
pub fn lock_memory() -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the call writes into; it outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if rc != 0 || (!root && lim.rlim_cur != libc::RLIM_INFINITY) {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} bytes and the daemon is not root",
            lim.rlim_cur
        ));
    }
    // SAFETY: mlockall takes flags only; MCL_ONFAULT locks pages as they are touched, so the
    // call does not fault in the whole address space.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc != 0 {
        return Err(format!("mlockall: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Ignore SIGPIPE: a closed log pipe (`nomadfs server 2>&1 | head -1`) must make writes fail
/// with EPIPE (which the log writer drops), never kill the daemon before it unmounts. Rust's
/// runtime already does this at start; doing it here too keeps it true whatever runs first.
pub fn ignore_sigpipe() {
    // SAFETY: signal() with SIG_IGN installs no handler code and touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Whether this process is still dumpable (checked and logged after `harden`).
pub fn is_dumpable() -> bool {
    // SAFETY: prctl(PR_GET_DUMPABLE) takes integer arguments and returns an int.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn harden_turns_off_dumps() {
        assert!(super::harden().is_empty());
        assert!(!super::is_dumpable());
    }
}
