//! The declared paths of `sys/`: pattern, route, operations, help line. `.help` and the
//! fixed listings are derived from this table (see `crate::route`).

use super::*;
use crate::route::{Ops, PathDecl};

pub(super) const HELP_INTRO: &str = "sys/: the control plane.";

/// The paths of `sys/`: routes, operations, help lines. The help text and the fixed entries of
/// the `sys/` listing are derived from this table.
pub(super) const PATHS: &[PathDecl<Route>] = &[
    PathDecl::new("", Route::Root, Ops::LIST, ""),
    PathDecl::new(".help", Route::Help, Ops::READ, ""),
    PathDecl::new(
        "health",
        Route::Health,
        Ops::READ,
        "read: JSON with sealed, version, storage type and health, lease count,\n\
         expiry role (single, leader, follower), node and leader",
    ),
    PathDecl::new("self", Route::SelfDir, Ops::LIST, ""),
    PathDecl::new(
        "self/errors",
        Route::SelfErrors,
        Ops::READ,
        "read: your own recent refusals, with their reasons (time, operation,\n\
         path, errno, reason); nobody else's",
    ),
    PathDecl::new(
        "seal",
        Route::Seal,
        Ops::WRITE,
        "write anything: seal (every mount disappears until unsealed)",
    ),
    PathDecl::new(
        "unseal",
        Route::Unseal,
        Ops::WRITE,
        "write the passphrase: unseal (initialises an empty store)",
    ),
    PathDecl::new(
        "rotate",
        Route::Rotate,
        Ops::WRITE,
        "write anything: add an encryption key term (old data stays readable)",
    ),
    PathDecl::new(
        "mounts",
        Route::Mounts,
        Ops::LIST,
        "ls: mount paths; cat mounts/NAME: its type and description\n\
         echo generic > mounts/NAME: mount a generic backend at NAME/\n\
         printf 'type = \"generic\"\\ndescription = \"team A\"\\n' > mounts/NAME\n\
         rm mounts/NAME: unmount (revokes its leases, deletes its data)\n\
         mv mounts/A mounts/B: remount (data kept, leases revoked)",
    ),
    PathDecl::new(
        "mounts.table",
        Route::MountsTable,
        Ops::READ,
        "the mount table as `Path Type Description` columns",
    ),
    PathDecl::new(
        "mounts/{name}",
        Route::Mount,
        Ops::READ.and(Ops::WRITE).and(Ops::DELETE).and(Ops::RENAME),
        "",
    ),
    PathDecl::new(
        "leases",
        Route::Leases,
        Ops::LIST,
        "one file per lease, in folders by path: leases/aws/creds/deploy/<uuid>\n\
         cat: issue and expiry time, ttl, renewable, path, uid, state\n\
         rm: revoke now (upstream first; EIO and kept if upstream refuses)\n\
         rm -r FOLDER: revoke every lease under it\n\
         touch: renew by the default increment; echo 3600 > (or 1h): renew by that",
    ),
    PathDecl::new(
        "leases/{*id}",
        Route::Lease,
        Ops::READ
            .and(Ops::WRITE)
            .and(Ops::DELETE)
            .and(Ops::LIST)
            .and(Ops::RMDIR),
        "",
    ),
    PathDecl::new(
        "revoke-uid",
        Route::RevokeUid,
        Ops::WRITE,
        "write a uid: revoke every lease that uid created",
    ),
    PathDecl::new("policies", Route::Policies, Ops::LIST, ""),
    PathDecl::new(
        "policies/{name}",
        Route::Policy,
        Ops::READ.and(Ops::WRITE).and(Ops::DELETE),
        "a policy (TOML or JSON: uids, gids, users, groups, cgroups, exes, rules);\n\
         write to add or replace (a bad one is refused, the old one stays), rm deletes",
    ),
    PathDecl::new(
        "audit-hash",
        Route::AuditHash,
        Ops::READ.and(Ops::WRITE).and(Ops::EXCHANGE),
        "the HMAC the audit log shows for a value: open it read-write, write the value,\n\
         read the HMAC from offset 0; or write the value (hashed when that file is\n\
         closed), then read the file (the last value you wrote; per uid)",
    ),
];
