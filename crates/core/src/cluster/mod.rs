//! Several daemons on one shared store: who revokes due leases (one elected, fenced expiry
//! leader) and how each daemon's caches follow changes made elsewhere (watches).
//!
//! Owns: the `Leadership` trait the lease manager asks before revoking at expiry (the role,
//! the current term, writes fenced by the term), `Role`, `Term`, and (feature `etcd`) its etcd
//! implementation in `etcd.rs`: a leader key bound to an etcd lease, kept alive, and every
//! fenced write a txn comparing the leader key's create revision with the term's; plus the
//! watches on the key prefixes whose changes other daemons must see.
//! Without a `Leadership` (file or memory store: one daemon), the daemon is always the expiry
//! leader and writes are not fenced (role `single`).
//!
//! Must never: report a term whose etcd lease may have lapsed (a term is dropped locally once
//! its lease could have expired without a keep-alive), or let a fenced write through when
//! the leader key is not this term's.

#[cfg(feature = "etcd")]
pub mod etcd;

use crate::error::Result;
use crate::storage::WriteOp;

/// What this daemon is in the expiry election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Alone on its store (file, memory): always revokes, nothing to elect.
    Single,
    /// Holds the leader key: revokes due leases, fenced by its term.
    Leader,
    /// Another daemon (or nobody yet) leads: revokes only what is asked (`rm`).
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

/// One leadership term: the leader key's create revision when this daemon won it. A later
/// leader's key has a higher one, so a write compared against this term fails once the term
/// is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub revision: i64,
}

/// The expiry election as the lease manager sees it.
pub trait Leadership: Send + Sync {
    fn role(&self) -> Role;
    /// The current term while this daemon leads (None: follower, or the term may be over).
    fn term(&self) -> Option<Term>;
    /// This daemon's id in the election, and the current leader's (if known).
    fn node_id(&self) -> String;
    fn leader_id(&self) -> Option<String>;
    /// Whether this daemon may lead (it is unsealed, its lease index loaded): a sealed
    /// daemon cannot revoke, so it must not hold the leadership. `false` steps down.
    fn set_eligible(&self, eligible: bool);
    /// A fenced write failed: the term is over (step down now, do not wait for the
    /// keep-alive to notice).
    fn lost(&self, term: Term);
    /// Apply `ops` (storage keys) atomically only while `term` is the leader's.
    /// Ok(false): fenced off, nothing written.
    fn apply_fenced(&self, term: Term, ops: &[WriteOp]) -> Result<bool>;
    /// Compare-and-swap `key` (storage key) only while `term` is the leader's.
    /// Ok(None): fenced off; Ok(Some(swapped)) otherwise.
    fn compare_and_swap_fenced(
        &self,
        term: Term,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Option<bool>>;
}
