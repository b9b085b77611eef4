//! The one place core errors become errnos. Exhaustive: a new `ErrorKind` does not compile
//! until it has an errno here. Never ENOSYS for a refusal.

use fuser::Errno;
use nomadfs_core::ErrorKind;

pub fn errno(kind: ErrorKind) -> Errno {
    match kind {
        ErrorKind::NotFound => Errno::ENOENT,
        ErrorKind::PermissionDenied => Errno::EACCES,
        ErrorKind::NotPermitted => Errno::EPERM,
        ErrorKind::InvalidInput => Errno::EINVAL,
        ErrorKind::NameTooLong => Errno::ENAMETOOLONG,
        ErrorKind::AlreadyExists => Errno::EEXIST,
        ErrorKind::TooLarge => Errno::EFBIG,
        ErrorKind::NotEmpty => Errno::ENOTEMPTY,
        ErrorKind::NotADirectory => Errno::ENOTDIR,
        ErrorKind::IsADirectory => Errno::EISDIR,
        ErrorKind::CrossMount => Errno::EXDEV,
        ErrorKind::Sealed => Errno::EACCES,
        ErrorKind::Busy => Errno::EBUSY,
        ErrorKind::Io => Errno::EIO,
        ErrorKind::Integrity => Errno::EIO,
        ErrorKind::TooManyOpen => Errno::EMFILE,
        ErrorKind::NoSpace => Errno::ENOSPC,
        ErrorKind::Quota => Errno::EDQUOT,
        ErrorKind::TryAgain => Errno::EAGAIN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_total_and_never_enosys() {
        let all = [
            ErrorKind::NotFound,
            ErrorKind::PermissionDenied,
            ErrorKind::NotPermitted,
            ErrorKind::InvalidInput,
            ErrorKind::NameTooLong,
            ErrorKind::AlreadyExists,
            ErrorKind::TooLarge,
            ErrorKind::NotEmpty,
            ErrorKind::NotADirectory,
            ErrorKind::IsADirectory,
            ErrorKind::CrossMount,
            ErrorKind::Sealed,
            ErrorKind::Busy,
            ErrorKind::Io,
            ErrorKind::Integrity,
            ErrorKind::TooManyOpen,
            ErrorKind::NoSpace,
            ErrorKind::Quota,
            ErrorKind::TryAgain,
        ];
        for k in all {
            assert_ne!(errno(k).code(), libc::ENOSYS, "{k:?}");
            let by_name = match k.errno_name() {
                "ENOENT" => libc::ENOENT,
                "EACCES" => libc::EACCES,
                "EPERM" => libc::EPERM,
                "EINVAL" => libc::EINVAL,
                "ENAMETOOLONG" => libc::ENAMETOOLONG,
                "EEXIST" => libc::EEXIST,
                "EFBIG" => libc::EFBIG,
                "ENOTEMPTY" => libc::ENOTEMPTY,
                "ENOTDIR" => libc::ENOTDIR,
                "EISDIR" => libc::EISDIR,
                "EXDEV" => libc::EXDEV,
                "EBUSY" => libc::EBUSY,
                "EIO" => libc::EIO,
                "EMFILE" => libc::EMFILE,
                "ENOSPC" => libc::ENOSPC,
                "EDQUOT" => libc::EDQUOT,
                "EAGAIN" => libc::EAGAIN,
                other => panic!("unknown errno name {other}"),
            };
            assert_eq!(errno(k).code(), by_name, "audit name of {k:?} disagrees");
        }
        assert_eq!(errno(ErrorKind::TooLarge).code(), libc::EFBIG);
        assert_eq!(errno(ErrorKind::CrossMount).code(), libc::EXDEV);
    }
}
