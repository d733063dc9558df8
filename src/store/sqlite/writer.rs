//! The single writer task: group commit of every write.
//!
//! Callers queue a [`Request`] and wait on a oneshot channel. The writer
//! takes every request waiting in its channel (up to `max_batch`), applies
//! them in one `BEGIN IMMEDIATE` transaction, commits once, and only then
//! replies to each caller. While one batch syncs to disk, the next requests
//! pile up in the channel, so one disk sync covers many callers.
//!
//! Enqueues of one batch are merged into multi-row inserts. Lease checks,
//! conflicts and other expected rejections are replies, not SQL errors, so
//! they never abort a batch. If a statement does fail, the batch is rolled
//! back and each request is retried in a transaction of its own, so one
//! failing request cannot fail the others.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::{enqueue, idempotency, queue, replay};
use crate::MessageId;
use crate::clock::SharedClock;
use crate::store::{
    ClaimOutcome, Claimed, FencingToken, Fingerprint, Lease, MessageState, NewMessage, Notifier,
    Outcome, StoreError, StoreErrorKind, StoredResponse,
};

/// A write that the writer task applies.
#[derive(Debug)]
pub(super) enum Request {
    Enqueue(Vec<NewMessage>),
    Claim {
        queue: String,
        limit: usize,
        lease: Duration,
    },
    Renew {
        lease: Lease,
        extend_by: Duration,
    },
    Finish {
        lease: Lease,
        state: MessageState,
        error: Option<String>,
        outcome: Option<Outcome>,
    },
    Reschedule {
        lease: Lease,
        available_at: SystemTime,
        error: String,
    },
    Release(Lease),
    Retry(MessageId),
    Purge {
        queue: String,
        state: MessageState,
        older_than: SystemTime,
    },
    IdempotencyClaim {
        digest: String,
        fingerprint: Fingerprint,
        lease: Duration,
    },
    IdempotencyRenew {
        digest: String,
        token: FencingToken,
        extend_by: Duration,
    },
    IdempotencyComplete {
        digest: String,
        token: FencingToken,
        response: StoredResponse,
        retention: Duration,
    },
    IdempotencyRelease {
        digest: String,
        token: FencingToken,
    },
    IdempotencyPurge,
    ReplayInsert {
        kid: String,
        nonce: String,
        ttl: Duration,
        prune: bool,
    },
}

/// The writer's reply to one [`Request`].
#[derive(Debug)]
pub(super) enum Response {
    Stored(Vec<bool>),
    Claimed(Vec<Claimed>),
    Renewed(Lease),
    Done,
    /// A message of this queue became due.
    Due(String),
    Retried(Option<String>),
    Count(u64),
    Idempotency(ClaimOutcome),
    Inserted(bool),
}

/// What applying one request returns: an SQL error aborts the batch, a
/// [`StoreError`] (such as a lost lease) is the request's own reply.
pub(super) type Applied = Result<Result<Response, StoreError>, sqlx::Error>;

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Response, StoreError>>,
}

/// A handle that queues requests for the writer task.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    sender: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.request.fmt(f)
    }
}

impl Writer {
    /// Starts the writer task, which owns `connection` until every handle
    /// is dropped.
    pub(super) fn spawn(
        connection: SqliteConnection,
        clock: SharedClock,
        notifier: Notifier,
        max_batch: usize,
    ) -> Self {
        // Twice a batch of room lets callers queue the next batch while the
        // current one commits; beyond that, callers wait (back-pressure).
        let (sender, receiver) = mpsc::channel(max_batch * 2);
        let task = Task {
            connection,
            clock,
            notifier,
            max_batch,
        };
        tokio::spawn(task.run(receiver));
        Self { sender }
    }

    /// Applies `request` and returns the reply once it is committed.
    pub(super) async fn call(&self, request: Request) -> Result<Response, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { request, reply };
        self.sender.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        "sqlite writer task stopped; the runtime that opened the store has shut down",
    )
}

/// Reports a reply of the wrong kind, which would be a bug in this module.
pub(super) fn unexpected(response: Response) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("sqlite writer returned an unexpected reply: {response:?}"),
    )
}

struct Task {
    connection: SqliteConnection,
    clock: SharedClock,
    notifier: Notifier,
    max_batch: usize,
}

impl Task {
    async fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(self.max_batch);
        while receiver.recv_many(&mut jobs, self.max_batch).await > 0 {
            self.apply_batch(std::mem::take(&mut jobs)).await;
        }
        if let Err(error) = self.connection.close().await {
            tracing::warn!(%error, "closing the sqlite writer connection failed");
        }
    }

    async fn apply_batch(&mut self, jobs: Vec<Job>) {
        let now = self.clock.now();
        let requests: Vec<&Request> = jobs.iter().map(|job| &job.request).collect();

        let replies = match enqueue::enqueue_only(&mut self.connection, &requests, now).await {
            Some(Ok(replies)) => replies,
            Some(Err(error)) => {
                tracing::warn!(%error, requests = jobs.len(), "sqlite enqueue batch failed; retrying it statement by statement");
                self.roll_back().await;
                self.apply_general(&requests, now).await
            }
            None => self.apply_general(&requests, now).await,
        };

        for (job, reply) in jobs.into_iter().zip(replies) {
            self.notify(&job.request, &reply);
            // A caller that gave up waiting dropped its receiver; the write
            // is committed all the same.
            let _ = job.reply.send(reply);
        }
    }

    /// Applies any mix of requests in one transaction, falling back to one
    /// transaction per request if a statement fails.
    async fn apply_general(
        &mut self,
        requests: &[&Request],
        now: SystemTime,
    ) -> Vec<Result<Response, StoreError>> {
        match apply_all(&mut self.connection, requests, now).await {
            Ok(replies) => replies,
            Err(BatchError::Begin(error)) => {
                let message = format!("sqlite write transaction could not start: {error}");
                tracing::warn!(%error, requests = requests.len(), "sqlite batch could not start");
                (0..requests.len())
                    .map(|_| {
                        Err(StoreError::new(
                            StoreErrorKind::Unavailable,
                            message.clone(),
                        ))
                    })
                    .collect()
            }
            Err(BatchError::Statement(error)) => {
                tracing::warn!(%error, requests = requests.len(), "sqlite batch failed; retrying each request alone");
                self.apply_each(requests, now).await
            }
        }
    }

    /// Ends a transaction that a failed combined statement left open.
    async fn roll_back(&mut self) {
        // "no transaction is active" is expected when BEGIN itself failed.
        if let Err(error) = sqlx::query("ROLLBACK").execute(&mut self.connection).await {
            tracing::debug!(%error, "sqlite rollback after a failed enqueue batch");
        }
    }

    async fn apply_each(
        &mut self,
        requests: &[&Request],
        now: SystemTime,
    ) -> Vec<Result<Response, StoreError>> {
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let answer = match apply_all(&mut self.connection, &[request], now).await {
                Ok(mut answer) => answer.remove(0),
                Err(BatchError::Begin(error) | BatchError::Statement(error)) => {
                    tracing::warn!(%error, ?request, "sqlite write failed");
                    Err(StoreError::unavailable("sqlite write failed", error))
                }
            };
            answers.push(answer);
        }
        answers
    }

    fn notify(&self, request: &Request, answer: &Result<Response, StoreError>) {
        match (request, answer) {
            (Request::Enqueue(messages), Ok(Response::Stored(stored))) => {
                let mut queues: HashSet<&str> = HashSet::new();
                for (message, _) in messages.iter().zip(stored).filter(|(_, s)| **s) {
                    queues.insert(&message.queue);
                }
                queues
                    .into_iter()
                    .for_each(|queue| self.notifier.notify(queue));
            }
            (_, Ok(Response::Due(queue) | Response::Retried(Some(queue)))) => {
                self.notifier.notify(queue);
            }
            _ => {}
        }
    }
}

enum BatchError {
    /// `BEGIN IMMEDIATE` failed, typically busy past the timeout: retrying
    /// each request alone would only wait again.
    Begin(sqlx::Error),
    Statement(sqlx::Error),
}

async fn apply_all(
    connection: &mut SqliteConnection,
    requests: &[&Request],
    now: SystemTime,
) -> Result<Vec<Result<Response, StoreError>>, BatchError> {
    let mut transaction = connection
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(BatchError::Begin)?;

    let mut answers = enqueue::enqueue_merged(&mut transaction, requests, now)
        .await
        .map_err(BatchError::Statement)?;
    for (request, answer) in requests.iter().zip(answers.iter_mut()) {
        if answer.is_none() {
            let applied = apply(&mut transaction, request, now).await;
            *answer = Some(applied.map_err(BatchError::Statement)?);
        }
    }

    transaction.commit().await.map_err(BatchError::Statement)?;
    Ok(answers
        .into_iter()
        .map(|answer| answer.expect("the loop above sets a reply for every request"))
        .collect())
}

async fn apply(connection: &mut SqliteConnection, request: &Request, now: SystemTime) -> Applied {
    match request {
        Request::Enqueue(_) => unreachable!("enqueues are merged before other requests"),
        Request::Claim {
            queue,
            limit,
            lease,
        } => queue::claim(connection, queue, *limit, now, now + *lease).await,
        Request::Renew { lease, extend_by } => {
            queue::renew(connection, lease, now + *extend_by).await
        }
        Request::Finish {
            lease,
            state,
            error,
            outcome,
        } => {
            queue::finish(
                connection,
                lease,
                *state,
                error.as_deref(),
                outcome.as_ref(),
                now,
            )
            .await
        }
        Request::Reschedule {
            lease,
            available_at,
            error,
        } => queue::reschedule(connection, lease, *available_at, error, now).await,
        Request::Release(lease) => queue::release(connection, lease, now).await,
        Request::Retry(id) => queue::retry(connection, *id, now).await,
        Request::Purge {
            queue,
            state,
            older_than,
        } => queue::purge(connection, queue, *state, *older_than).await,
        Request::IdempotencyClaim {
            digest,
            fingerprint,
            lease,
        } => idempotency::claim(connection, digest, *fingerprint, now + *lease, now).await,
        Request::IdempotencyRenew {
            digest,
            token,
            extend_by,
        } => idempotency::renew(connection, digest, *token, now + *extend_by).await,
        Request::IdempotencyComplete {
            digest,
            token,
            response,
            retention,
        } => idempotency::complete(connection, digest, *token, response, now + *retention).await,
        Request::IdempotencyRelease { digest, token } => {
            idempotency::release(connection, digest, *token).await
        }
        Request::IdempotencyPurge => idempotency::purge_expired(connection, now).await,
        Request::ReplayInsert {
            kid,
            nonce,
            ttl,
            prune,
        } => replay::insert(connection, kid, nonce, now, now + *ttl, *prune).await,
    }
}
