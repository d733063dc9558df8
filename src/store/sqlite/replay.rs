//! The statement of the replay guard, run by the writer task.

use std::time::SystemTime;

use sqlx::SqliteConnection;

use super::rows::to_nanos;
use super::writer::{Applied, Response};

/// How many expired pairs one pruning pass deletes at most, so that a
/// backlog never makes one insert slow.
const PRUNE_LIMIT: i64 = 1_024;

pub(super) async fn insert(
    connection: &mut SqliteConnection,
    kid: &str,
    nonce: &str,
    now: SystemTime,
    expires_at: SystemTime,
    prune: bool,
) -> Applied {
    // Inserts the pair, or takes over a row whose time to live ended; a
    // live row makes the statement return nothing.
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO courier_replay (kid, nonce, expires_at) VALUES (?, ?, ?) \
         ON CONFLICT (kid, nonce) DO UPDATE SET expires_at = excluded.expires_at \
         WHERE courier_replay.expires_at <= ? RETURNING 1",
    )
    .bind(kid)
    .bind(nonce)
    .bind(to_nanos(expires_at))
    .bind(to_nanos(now))
    .fetch_optional(&mut *connection)
    .await?;

    if prune {
        sqlx::query(
            "DELETE FROM courier_replay WHERE rowid IN \
             (SELECT rowid FROM courier_replay WHERE expires_at <= ? LIMIT ?)",
        )
        .bind(to_nanos(now))
        .bind(PRUNE_LIMIT)
        .execute(&mut *connection)
        .await?;
    }
    Ok(Ok(Response::Inserted(inserted.is_some())))
}
