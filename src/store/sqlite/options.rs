use std::fmt;
use std::time::Duration;

use crate::clock::{self, SharedClock};

/// The durability of a commit: which crashes it survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=FULL`: every commit is synced to disk before the call
    /// returns, so an acknowledged write survives a power loss. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits survive a crash of the process but the
    /// last ones may be lost on a power loss or an operating-system crash.
    /// Faster on disks with slow syncs.
    Normal,
}

/// Settings of a [`SqliteStore`](super::SqliteStore).
#[derive(Clone)]
pub struct SqliteOptions {
    pub(super) synchronous: Synchronous,
    pub(super) busy_timeout: Duration,
    pub(super) max_batch: usize,
    pub(super) read_connections: u32,
    pub(super) clock: SharedClock,
}

impl SqliteOptions {
    /// Creates the default settings; see each setter for its default.
    pub fn new() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
            read_connections: 4,
            clock: clock::system(),
        }
    }

    /// Sets the durability of commits.
    ///
    /// Default: [`Synchronous::Full`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets how long a connection waits for another connection's lock
    /// (another process, or a transaction on [`pool`](super::SqliteStore::pool))
    /// before the call fails as unavailable.
    ///
    /// Default: 5 seconds.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets how many queued operations one write transaction may apply.
    /// Larger batches commit more messages per disk sync. The writer never
    /// waits for a batch to fill up: it takes what is queued.
    ///
    /// Default: 512. A value of 0 is treated as 1.
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }

    /// Sets the size of the connection pool used for reads and returned by
    /// [`pool`](super::SqliteStore::pool).
    ///
    /// Default: 4. A value of 0 is treated as 1.
    pub fn read_connections(mut self, connections: u32) -> Self {
        self.read_connections = connections.max(1);
        self
    }

    /// Sets the clock that leases, schedules and expiries read.
    ///
    /// Default: the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("synchronous", &self.synchronous)
            .field("busy_timeout", &self.busy_timeout)
            .field("max_batch", &self.max_batch)
            .field("read_connections", &self.read_connections)
            .finish_non_exhaustive()
    }
}
