//! In-process stores for tests and demos.
//!
//! **Not durable**: everything is lost when the process exits, and nothing
//! is shared between processes. Use the SQLite store for a single process
//! that must not lose messages, and PostgreSQL or Redis for several.

mod replay;

pub use replay::MemoryReplayStore;
