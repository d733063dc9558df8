//! [`IdempotencyStore`] and [`ReplayStore`] on PostgreSQL.
//!
//! Idempotency tokens come from one sequence rather than a per-row
//! counter, because a released or purged record's row is deleted: a
//! counter would start again at 1 and let a stale holder's token match.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::row::{corrupt, decode_status, duration_micros, from_micros};
use super::sql::query;
use super::{PostgresStore, query_failed};
use crate::store::{
    ClaimOutcome, CompletedRecord, FencingToken, Fingerprint, IdempotencyKey, IdempotencyRecord,
    IdempotencyStore, ReplayStore, StoreError, StoredResponse, decode_headers, encode_headers,
};

/// How often inserts delete expired replay nonces.
const REPLAY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How many times a claim retries when the record it lost to was deleted
/// before it could be read. Each retry needs another release or purge
/// within one round trip, so 5 attempts are rarely all used.
const CLAIM_ATTEMPTS: usize = 5;

#[async_trait]
impl IdempotencyStore for PostgresStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let digest = key.digest();
        for _ in 0..CLAIM_ATTEMPTS {
            let claimed = query(&self.shared.sql.idem_claim)
                .bind(&digest)
                .bind(fingerprint.0.as_slice())
                .bind(duration_micros(lease))
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(|error| query_failed("claim an idempotency key", error))?;
            if let Some(row) = claimed {
                let token: i64 = row
                    .try_get(0)
                    .map_err(|error| query_failed("read an idempotency token", error))?;
                return Ok(ClaimOutcome::Claimed(FencingToken(token as u64)));
            }

            // A live record won; read it, unless it went away meanwhile.
            match self.read_record(&digest).await? {
                Some(IdempotencyRecord::InProgress { fingerprint, .. }) => {
                    return Ok(ClaimOutcome::InProgress { fingerprint });
                }
                Some(IdempotencyRecord::Completed(record)) => {
                    return Ok(ClaimOutcome::Completed(record));
                }
                None => continue,
            }
        }
        Err(StoreError::unavailable(
            "failed to claim an idempotency key in postgres",
            "the record changed on every attempt",
        ))
    }

    async fn renew(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        extend_by: Duration,
    ) -> Result<(), StoreError> {
        let result = query(&self.shared.sql.idem_renew)
            .bind(key.digest())
            .bind(token.0 as i64)
            .bind(duration_micros(extend_by))
            .execute(&self.shared.pool)
            .await
            .map_err(|error| query_failed("renew an idempotency claim", error))?;
        check_token(result.rows_affected(), token)
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let result = query(&self.shared.sql.idem_complete)
            .bind(key.digest())
            .bind(token.0 as i64)
            .bind(response.status.as_u16() as i16)
            .bind(encode_headers(&response.headers))
            .bind(response.body.as_ref())
            .bind(duration_micros(retention))
            .execute(&self.shared.pool)
            .await
            .map_err(|error| query_failed("complete an idempotency record", error))?;
        check_token(result.rows_affected(), token)
    }

    async fn release(&self, key: &IdempotencyKey, token: FencingToken) -> Result<(), StoreError> {
        let result = query(&self.shared.sql.idem_release)
            .bind(key.digest())
            .bind(token.0 as i64)
            .execute(&self.shared.pool)
            .await
            .map_err(|error| query_failed("release an idempotency claim", error))?;
        check_token(result.rows_affected(), token)
    }

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.read_record(&key.digest()).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let result = query(&self.shared.sql.idem_purge)
            .execute(&self.shared.pool)
            .await
            .map_err(|error| query_failed("purge idempotency records", error))?;
        Ok(result.rows_affected())
    }
}

impl PostgresStore {
    async fn read_record(&self, digest: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = query(&self.shared.sql.idem_get)
            .bind(digest)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(|error| query_failed("read an idempotency record", error))?;
        row.as_ref().map(decode_record).transpose()
    }

    /// Starts a delete of expired nonces if the last one is older than
    /// [`REPLAY_SWEEP_INTERVAL`], so the table stays near the live set
    /// without adding the delete's latency to an insert.
    fn sweep_replay_nonces(&self) {
        {
            let mut last = self
                .shared
                .replay_sweep
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|last| last.elapsed() < REPLAY_SWEEP_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let swept = query(&shared.sql.replay_sweep).execute(&shared.pool).await;
            match swept {
                Ok(result) => {
                    tracing::debug!(
                        deleted = result.rows_affected(),
                        "deleted expired replay nonces"
                    );
                }
                Err(error) => tracing::warn!(%error, "failed to delete expired replay nonces"),
            }
        });
    }
}

#[async_trait]
impl ReplayStore for PostgresStore {
    async fn insert(&self, kid: &str, nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.sweep_replay_nonces();
        let row = query(&self.shared.sql.replay_insert)
            .bind(kid)
            .bind(nonce)
            .bind(duration_micros(ttl))
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(|error| query_failed("record a replay nonce", error))?;
        Ok(row.is_some())
    }
}

fn decode_record(row: &PgRow) -> Result<IdempotencyRecord, StoreError> {
    let fail = |error| query_failed("decode an idempotency record", error);
    let fingerprint: Vec<u8> = row.try_get(0).map_err(fail)?;
    let fingerprint = Fingerprint(fingerprint.try_into().map_err(|_| corrupt("fingerprint"))?);
    let token: i64 = row.try_get(1).map_err(fail)?;
    let completed: bool = row.try_get(2).map_err(fail)?;
    let expires_at = from_micros(row.try_get(3).map_err(fail)?);

    if !completed {
        return Ok(IdempotencyRecord::InProgress {
            fingerprint,
            token: FencingToken(token as u64),
            expires_at,
        });
    }
    let status: Option<i16> = row.try_get(4).map_err(fail)?;
    let headers: Option<Vec<u8>> = row.try_get(5).map_err(fail)?;
    let body: Option<Vec<u8>> = row.try_get(6).map_err(fail)?;
    let response = StoredResponse {
        status: decode_status(status.ok_or_else(|| corrupt("status"))?)?,
        headers: decode_headers(&headers.unwrap_or_default())?,
        body: Bytes::from(body.unwrap_or_default()),
    };
    Ok(IdempotencyRecord::Completed(CompletedRecord {
        fingerprint,
        response,
        expires_at,
    }))
}

fn check_token(rows_affected: u64, token: FencingToken) -> Result<(), StoreError> {
    if rows_affected == 0 {
        return Err(StoreError::lease_lost(format!(
            "idempotency claim with token {} is no longer current",
            token.0
        )));
    }
    Ok(())
}
