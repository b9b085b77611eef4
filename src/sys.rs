//! Process hardening: the only `unsafe` in the binary, each call wrapped and commented.
//!
//! Owns: turning off core dumps and ptrace-ability of the daemon. Must never: do anything else.
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

/// Whether core dumps are off for this process (for tests and `status`).
#[cfg(test)]
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
