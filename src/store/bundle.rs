use std::fmt;
use std::sync::Arc;

use super::{IdempotencyStore, MessageQueue, ReplayStore, StoreError, StoreErrorKind};

/// The three stores of one backend, shared by the layers of a service.
///
/// Cloning is cheap: clones share the backend.
#[derive(Clone)]
pub struct Store {
    queue: Arc<dyn MessageQueue>,
    idempotency: Arc<dyn IdempotencyStore>,
    replay: Arc<dyn ReplayStore>,
    description: Arc<str>,
}

impl Store {
    /// Creates a bundle from one backend that implements all three traits.
    pub fn new<B>(backend: B) -> Self
    where
        B: MessageQueue + IdempotencyStore + ReplayStore,
    {
        let backend = Arc::new(backend);
        Self {
            description: format!("{backend:?}").into(),
            queue: backend.clone(),
            idempotency: backend.clone(),
            replay: backend,
        }
    }

    /// Creates a bundle from three separate stores.
    pub fn from_parts(
        queue: Arc<dyn MessageQueue>,
        idempotency: Arc<dyn IdempotencyStore>,
        replay: Arc<dyn ReplayStore>,
    ) -> Self {
        Self {
            description: format!("{queue:?}").into(),
            queue,
            idempotency,
            replay,
        }
    }

    /// Opens the backend that `url` names.
    ///
    /// | URL | backend |
    /// |---|---|
    /// | `memory` | [`memory::MemoryStore`](super::memory::MemoryStore), not durable |
    /// | `sqlite:PATH` | [`sqlite::SqliteStore`](super::sqlite::SqliteStore) (feature `sqlite`) |
    /// | `postgres://...` | the PostgreSQL store (feature `postgres`) |
    /// | `redis://...` | the Redis store (feature `redis`) |
    ///
    /// # Errors
    ///
    /// Fails with [`StoreErrorKind::Invalid`] for an unknown scheme or a
    /// backend not compiled in, and with the backend's own error when it
    /// cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "memory" if url == "memory" || url == "memory:" => {
                Ok(Self::new(super::memory::MemoryStore::new()))
            }
            _ => Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "unsupported store url {url:?}: expected memory, sqlite:PATH, \
                     postgres://... or redis://... with the matching cargo feature"
                ),
            )),
        }
    }

    /// Returns the message queue.
    pub fn queue(&self) -> Arc<dyn MessageQueue> {
        self.queue.clone()
    }

    /// Returns the idempotency record store.
    pub fn idempotency(&self) -> Arc<dyn IdempotencyStore> {
        self.idempotency.clone()
    }

    /// Returns the replay-guard store.
    pub fn replay(&self) -> Arc<dyn ReplayStore> {
        self.replay.clone()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Store").field(&self.description).finish()
    }
}
