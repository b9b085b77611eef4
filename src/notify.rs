//! systemd's readiness protocol (sd_notify): one datagram per state change to `$NOTIFY_SOCKET`.
//!
//! Owns: sending `READY=1` (mounted and unsealed), `STATUS=…` and `STOPPING=1`. A path starting
//! with `@` names an abstract socket. Without `$NOTIFY_SOCKET` (not run by systemd) it does
//! nothing. Must never: fail the daemon (a lost notification is logged, not fatal).

use std::os::unix::net::UnixDatagram;

/// Send `state` (newline-separated `KEY=VALUE` lines); Ok(false) when not under systemd.
pub fn send(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), &path)?;
        }
    }
    Ok(true)
}

/// Send and log a failure (never fatal).
pub fn notify(state: &str) {
    match send(state) {
        Ok(true) => tracing::debug!(state, "sd_notify"),
        Ok(false) => {}
        Err(e) => tracing::warn!("sd_notify {state:?} to $NOTIFY_SOCKET failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    /// One test for both socket kinds: NOTIFY_SOCKET is process-wide.
    #[test]
    fn sends_to_path_and_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("notify");
        let rx = UnixDatagram::bind(&p).expect("bind");
        std::env::set_var("NOTIFY_SOCKET", &p);
        assert!(super::send("READY=1").expect("send"));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("nomadfs-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        assert!(super::send("STOPPING=1").expect("send abstract"));
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");

        std::env::set_var("NOTIFY_SOCKET", d.path().join("nobody-listens"));
        assert!(super::send("READY=1").is_err());
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!super::send("READY=1").expect("no socket"));
    }
}
