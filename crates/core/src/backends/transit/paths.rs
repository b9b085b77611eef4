//! The declared paths of a transit mount: pattern, route, operations, help line. `.help` and the
//! fixed listings are derived from this table (see `crate::route`).

use super::*;
use crate::route::{Ops, PathDecl};

pub(super) const HELP_INTRO: &str =
    "transit backend: encryption as a service. Keys never leave the daemon.";
pub(super) const HELP_NOTES: &str = "Errors: unknown key ENOENT; malformed or tampered ciphertext EINVAL; a ciphertext version below\nmin_decryption_version EPERM; plaintext over the size limit EFBIG. Capability: `update` on the\nexchange path (e.g. transit/encrypt/NAME).";

/// The paths of a transit mount: routes, operations, help lines. `.help` and the fixed
/// listings (the root, a key's folder) are derived from this table.
pub(super) const PATHS: &[PathDecl<Route>] = &[
    PathDecl::new("", Route::Root, Ops::LIST, ""),
    PathDecl::new("keys", Route::Keys, Ops::LIST, "ls: the key names"),
    PathDecl::new(
        "keys/{name}",
        Route::Key,
        Ops::LIST.and(Ops::MKDIR).and(Ops::RMDIR),
        "create key NAME (version 1, AES-256-GCM)",
    )
    .shown("mkdir keys/NAME"),
    PathDecl::new(
        "keys/{name}",
        Route::Key,
        Ops::LIST.and(Ops::MKDIR).and(Ops::RMDIR),
        "delete the key (also rm -r); EPERM until deletion_allowed=true.\nEverything encrypted with it becomes undecryptable.",
    )
    .shown("rmdir keys/NAME"),
    PathDecl::new("keys/{name}/info", Route::Info, Ops::READ, "JSON: name, type, versions (creation times), latest_version,\nmin_decryption_version, deletion_allowed. Never key material."),
    PathDecl::new("keys/{name}/ctl", Route::Ctl, Ops::WRITE, "write-only commands, one per line:\n  rotate                     add a new version (new encryptions use it)\n  min_decryption_version=N   refuse ciphertexts older than version N\n  deletion_allowed=true|false\napplied at close, all or none; a bad line fails the write that\ncarries it with EINVAL (reason in sys/self/errors and the daemon log)"),
    PathDecl::new("encrypt", Route::OpDir(Exchange::Encrypt), Ops::LIST, ""),
    PathDecl::new(
        "encrypt/{name}",
        Route::OpFile(Exchange::Encrypt),
        Ops::EXCHANGE,
        "open read-write, write the plaintext (raw bytes), read the ciphertext\n`nomadfs:vN:BASE64` from offset 0 in the same open",
    ),
    PathDecl::new("decrypt", Route::OpDir(Exchange::Decrypt), Ops::LIST, ""),
    PathDecl::new(
        "decrypt/{name}",
        Route::OpFile(Exchange::Decrypt),
        Ops::EXCHANGE,
        "the same with a ciphertext in, the plaintext out",
    ),
    PathDecl::new("rewrap", Route::OpDir(Exchange::Rewrap), Ops::LIST, ""),
    PathDecl::new(
        "rewrap/{name}",
        Route::OpFile(Exchange::Rewrap),
        Ops::EXCHANGE,
        "the same with a ciphertext in, a ciphertext under the newest version out\nEach read at offset 0 after writes runs the operation once; a new write\nat offset 0 starts a new input. CLI: nomadfs encrypt|decrypt|rewrap NAME.",
    ),
];
