//! A synchronous facade's own tokio runtime: the IAM client, the PostgreSQL client and the etcd
//! storage each own one, so FUSE worker threads (or any thread, even one inside another tokio
//! runtime) may call them, many at once.
//!
//! Owns: building the runtime (2 worker threads, named), handing a future to it and waiting for
//! the answer on a plain channel, and shutting it down without blocking on drop.
//! Must never: know what the futures do (no upstream, no protocol), or block on drop.

use crate::error::{Error, Result};
use std::future::Future;
use std::time::Duration;

/// A small tokio runtime for one client, named in errors as `what` ("IAM client", ...).
pub(crate) struct OwnRuntime {
    /// `Option` only so `Drop` can take it and shut it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    what: &'static str,
}

impl OwnRuntime {
    /// Start the runtime; its threads are named `thread_name`.
    pub(crate) fn new(thread_name: &str, what: &'static str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(thread_name)
            .enable_all()
            .build()
            .map_err(|e| Error::io(format!("{what}: cannot start its runtime: {e}")))?;
        Ok(Self {
            runtime: Some(runtime),
            what,
        })
    }

    /// The runtime, for work that outlives one call (spawned tasks answering later).
    pub(crate) fn get(&self) -> Result<&tokio::runtime::Runtime> {
        self.runtime
            .as_ref()
            .ok_or_else(|| Error::io(format!("{}: its runtime is shut down", self.what)))
    }

    /// Run `fut` on the runtime and wait for its output from this (any) thread.
    fn wait<R, F>(&self, fut: F) -> Result<R>
    where
        R: Send + 'static,
        F: Future<Output = R> + Send + 'static,
    {
        let runtime = self.get()?;
        // A std channel rather than `block_on`: works from threads inside a tokio runtime too.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            // The receiver only goes away if the caller is gone; nothing to do then.
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| Error::io(format!("{}: the call ended without an answer", self.what)))
    }

    /// Run `fut` on the runtime and wait for it from this (any) thread.
    pub(crate) fn run<T, F>(&self, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.wait(fut)?
    }

    /// As `run`, bounded by `limit`: past it, the call fails with `timed_out()`.
    pub(crate) fn run_within<T, F>(
        &self,
        limit: Duration,
        fut: F,
        timed_out: impl FnOnce() -> Error,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        match self.wait(async move { tokio::time::timeout(limit, fut).await })? {
            Ok(r) => r,
            Err(_) => Err(timed_out()),
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping is safe from any thread, async ones included.
            rt.shutdown_background();
        }
    }
}
