//! [`IdempotencyStore`] and [`ReplayStore`] on Redis.
//!
//! Idempotency tokens come from one counter key rather than a per-record
//! counter, because a released or purged record's key is deleted: a
//! counter inside it would start again at 1 and let a stale holder's token
//! match.

use std::time::Duration;

use async_trait::async_trait;

use super::decode::{decode_record, duration_millis, number};
use super::{RedisStore, command_failed};
use crate::store::{
    ClaimOutcome, FencingToken, Fingerprint, IdempotencyKey, IdempotencyRecord, IdempotencyStore,
    ReplayStore, StoreError, StoredResponse, encode_headers,
};

/// How many expired records one purge script reads before yielding the
/// server to other clients.
const PURGE_BATCH: usize = 1000;

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let raw: Vec<Option<Vec<u8>>> = self
            .shared
            .scripts
            .record_claim
            .arg(&self.shared.prefix)
            .arg(key.digest())
            .arg(fingerprint.0.as_slice())
            .arg(duration_millis(lease))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("claim an idempotency key", error))?;

        if raw.first().and_then(Option::as_deref) == Some(b"claimed".as_slice()) {
            let token = number(raw.into_iter().nth(1).flatten(), "token")?;
            return Ok(ClaimOutcome::Claimed(FencingToken(token)));
        }
        Ok(match decode_record(raw)? {
            IdempotencyRecord::InProgress { fingerprint, .. } => {
                ClaimOutcome::InProgress { fingerprint }
            }
            IdempotencyRecord::Completed(record) => ClaimOutcome::Completed(record),
        })
    }

    async fn renew(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        extend_by: Duration,
    ) -> Result<(), StoreError> {
        let applied: i64 = self
            .shared
            .scripts
            .record_renew
            .arg(&self.shared.prefix)
            .arg(key.digest())
            .arg(token.0)
            .arg(duration_millis(extend_by))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("renew an idempotency claim", error))?;
        check_token(applied, token)
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let applied: i64 = self
            .shared
            .scripts
            .record_complete
            .arg(&self.shared.prefix)
            .arg(key.digest())
            .arg(token.0)
            .arg(response.status.as_str())
            .arg(encode_headers(&response.headers))
            .arg(response.body.as_ref())
            .arg(duration_millis(retention))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("complete an idempotency record", error))?;
        check_token(applied, token)
    }

    async fn release(&self, key: &IdempotencyKey, token: FencingToken) -> Result<(), StoreError> {
        let applied: i64 = self
            .shared
            .scripts
            .record_release
            .arg(&self.shared.prefix)
            .arg(key.digest())
            .arg(token.0)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("release an idempotency claim", error))?;
        check_token(applied, token)
    }

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        let raw: Option<Vec<Option<Vec<u8>>>> = self
            .shared
            .scripts
            .record_get
            .arg(&self.shared.prefix)
            .arg(key.digest())
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("read an idempotency record", error))?;
        raw.map(decode_record).transpose()
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let (deleted, read): (u64, usize) = self
                .shared
                .scripts
                .record_purge
                .arg(&self.shared.prefix)
                .arg(PURGE_BATCH)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|error| command_failed("purge idempotency records", error))?;
            total += deleted;
            if read < PURGE_BATCH {
                return Ok(total);
            }
        }
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    async fn insert(&self, kid: &str, nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        // `SET NX PX` is atomic on its own: of concurrent inserts of one
        // pair, exactly one finds the key absent.
        let key = format!("{}r:{}:{kid}:{nonce}", self.shared.prefix, kid.len());
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(duration_millis(ttl))
            .query_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("record a replay nonce", error))?;
        Ok(set.is_some())
    }
}

fn check_token(applied: i64, token: FencingToken) -> Result<(), StoreError> {
    if applied != 1 {
        return Err(StoreError::lease_lost(format!(
            "idempotency claim with token {} is no longer current",
            token.0
        )));
    }
    Ok(())
}
