//! Final states of claimed messages, group-committed.
//!
//! A dispatcher settles each message in its own task, so under load many
//! results arrive at once. One task per store takes every result that
//! arrived while its previous statement ran, up to the batch size, and
//! writes them with one `UPDATE ... FROM unnest(...)` in one transaction.
//! A whole batch then shares one round trip and one WAL flush, where one
//! statement per message would queue for the pool's connections.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::row::{lease_lost, strip_nul};
use super::sql::query;
use super::writer::next_batch;
use super::{Shared, query_failed};
use crate::store::{Lease, MessageState, Outcome, StoreError, StoreErrorKind};

/// One message's final state, in the form its row is bound in.
pub(super) struct FinalState {
    id: String,
    token: i64,
    state: &'static str,
    error: Option<String>,
    status: Option<i16>,
    body: Option<Vec<u8>>,
}

impl FinalState {
    pub(super) fn new(
        lease: &Lease,
        state: MessageState,
        error: Option<&str>,
        outcome: Option<Outcome>,
    ) -> Self {
        Self {
            id: lease.id.to_string(),
            token: lease.token.0 as i64,
            state: state.as_str(),
            error: error.map(|error| strip_nul(error).into_owned()),
            status: outcome
                .as_ref()
                .map(|outcome| outcome.status.as_u16() as i16),
            body: outcome.map(|outcome| outcome.body.to_vec()),
        }
    }

    /// Returns the error for a write whose lease was no longer current.
    fn lease_lost(&self) -> StoreError {
        lease_lost(&self.id, self.token as u64)
    }
}

/// One caller's final state, waiting for the finisher.
pub(super) struct FinishRequest {
    pub(super) row: FinalState,
    pub(super) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Runs the finisher until every store handle is dropped.
pub(super) async fn run(shared: Arc<Shared>, mut receiver: mpsc::Receiver<FinishRequest>) {
    while let Some(batch) = next_batch(&mut receiver, shared.batch_size, |_| 1).await {
        write_batch(&shared, batch).await;
    }
}

/// Writes `batch`, and sends every caller its result.
async fn write_batch(shared: &Shared, batch: Vec<FinishRequest>) {
    // One statement updates a row at most once, so a second result for
    // the same message waits for a statement of its own.
    let mut seen = HashSet::new();
    let (first, repeated): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|request| seen.insert(request.row.id.clone()));

    answer(shared, first).await;
    for request in repeated {
        answer(shared, vec![request]).await;
    }
}

/// Writes the rows of `requests`, which name distinct messages, in one
/// statement and sends each caller its result.
async fn answer(shared: &Shared, requests: Vec<FinishRequest>) {
    let rows: Vec<&FinalState> = requests.iter().map(|request| &request.row).collect();
    match finish(shared, &rows).await {
        Ok(updated) => {
            for request in requests {
                let result = if updated.contains(&request.row.id) {
                    Ok(())
                } else {
                    Err(request.row.lease_lost())
                };
                let _ = request.reply.send(result);
            }
        }
        Err(error) => {
            // Every caller gets the error, because a lost connection fails
            // the whole batch and no bound value can be rejected alone.
            // The driver's error cannot be cloned, so each copy carries its
            // text as the source.
            let kind = error.kind();
            let message = error.to_string();
            let cause = std::error::Error::source(&error).map(ToString::to_string);
            for request in requests {
                let mut copy = StoreError::new(kind, message.clone());
                if let Some(cause) = &cause {
                    copy = copy.with_source(cause.clone());
                }
                let _ = request.reply.send(Err(copy));
            }
        }
    }
}

/// Writes `rows` in one statement, a transaction of its own, and returns
/// the ids whose lease was still current.
pub(super) async fn finish(
    shared: &Shared,
    rows: &[&FinalState],
) -> Result<HashSet<String>, StoreError> {
    let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
    let tokens: Vec<i64> = rows.iter().map(|row| row.token).collect();
    let states: Vec<&str> = rows.iter().map(|row| row.state).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|row| row.error.as_deref()).collect();
    let statuses: Vec<Option<i16>> = rows.iter().map(|row| row.status).collect();
    let bodies: Vec<Option<&[u8]>> = rows.iter().map(|row| row.body.as_deref()).collect();

    let updated = query(&shared.sql.finish)
        .bind(ids)
        .bind(tokens)
        .bind(states)
        .bind(errors)
        .bind(statuses)
        .bind(bodies)
        .fetch_all(&shared.pool)
        .await
        .map_err(|error| query_failed("finish messages", error))?;

    updated
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<_, _>>()
        .map_err(|error| {
            StoreError::new(StoreErrorKind::Corrupt, "failed to read finished ids")
                .with_source(error)
        })
}

/// Writes one final state without the finisher.
pub(super) async fn finish_alone(shared: &Shared, row: &FinalState) -> Result<(), StoreError> {
    let updated = finish(shared, &[row]).await?;
    if updated.contains(&row.id) {
        Ok(())
    } else {
        Err(row.lease_lost())
    }
}
