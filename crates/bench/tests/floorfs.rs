//! Mounts the floorfs binary and checks it serves, writes and truncates `x`.
//! Needs root and /dev/fuse (as CI has); skipped otherwise.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn can_mount() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    root && std::path::Path::new("/dev/fuse").exists()
}

#[test]
fn floorfs_serves_one_writable_file() {
    if !can_mount() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let dir = std::env::temp_dir().join(format!("floorfs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_floorfs"))
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let x = dir.join("x");
    let start = Instant::now();
    while std::fs::metadata(&x).map(|m| m.len()).unwrap_or(0) != 64 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "floorfs did not mount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = std::panic::catch_unwind(|| {
        assert_eq!(std::fs::read(&x).unwrap().len(), 64);
        std::fs::write(&x, b"abc").unwrap();
        assert_eq!(std::fs::read(&x).unwrap(), b"abc");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"]);
    });
    // SIGTERM: floorfs unmounts and exits 0.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_dir(&dir);
    result.unwrap();
    assert!(status.success(), "floorfs exit: {status}");
}
