use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::MemoryStore;
use super::digest::{DigestMap, Digester};
use crate::store::{
    ClaimOutcome, CompletedRecord, FencingToken, Fingerprint, IdempotencyKey, IdempotencyRecord,
    IdempotencyStore, StoreError, StoreErrorKind, StoredResponse,
};

/// The idempotency records of a [`MemoryStore`].
#[derive(Debug, Default)]
pub(super) struct Records {
    /// The records by the digest of their key, which costs no allocation
    /// per key and one short hash per lookup.
    records: DigestMap<Record>,
    digester: Digester,
    /// The last token handed out. Tokens come from one counter for all
    /// keys, so a claim taken after a release never reuses a token.
    last_token: u64,
}

#[derive(Debug, Clone)]
enum Record {
    Claim {
        fingerprint: Fingerprint,
        token: FencingToken,
        expires_at: SystemTime,
    },
    Completed(CompletedRecord),
}

impl Record {
    fn expires_at(&self) -> SystemTime {
        match self {
            Record::Claim { expires_at, .. } => *expires_at,
            Record::Completed(completed) => completed.expires_at,
        }
    }

    fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at() > now
    }
}

impl Records {
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    fn claim(
        &mut self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        expires_at: SystemTime,
        now: SystemTime,
        max: usize,
    ) -> Result<ClaimOutcome, StoreError> {
        let key = self.digester.digest(key);
        match self.records.get(&key) {
            Some(record) if record.is_live(now) => return Ok(Self::found(record)),
            Some(_) => {}
            None => self.make_room(now, max)?,
        }

        self.last_token += 1;
        let token = FencingToken(self.last_token);
        let claim = Record::Claim {
            fingerprint,
            token,
            expires_at,
        };
        self.records.insert(key, claim);
        Ok(ClaimOutcome::Claimed(token))
    }

    fn found(record: &Record) -> ClaimOutcome {
        match record {
            Record::Claim { fingerprint, .. } => ClaimOutcome::InProgress {
                fingerprint: *fingerprint,
            },
            Record::Completed(completed) => ClaimOutcome::Completed(completed.clone()),
        }
    }

    fn make_room(&mut self, now: SystemTime, max: usize) -> Result<(), StoreError> {
        if self.records.len() < max {
            return Ok(());
        }
        self.purge_expired(now);
        if self.records.len() < max {
            return Ok(());
        }
        Err(StoreError::new(
            StoreErrorKind::Full,
            format!(
                "memory store is full: {} live idempotency records, {max} allowed; raise max_idempotency_records",
                self.records.len()
            ),
        ))
    }

    /// Applies `change` to the claim of `key` if `token` is its current
    /// token, and returns the record that replaces it (`None` deletes it).
    fn with_claim(
        &mut self,
        key: &IdempotencyKey,
        token: FencingToken,
        change: impl FnOnce(Fingerprint) -> Option<Record>,
    ) -> Result<(), StoreError> {
        let key = self.digester.digest(key);
        let fingerprint = match self.records.get(&key) {
            Some(Record::Claim {
                fingerprint,
                token: current,
                ..
            }) if *current == token => *fingerprint,
            _ => {
                return Err(StoreError::lease_lost(format!(
                    "idempotency claim with token {} is no longer held",
                    token.0
                )));
            }
        };

        match change(fingerprint) {
            Some(record) => self.records.insert(key, record),
            None => self.records.remove(&key),
        };
        Ok(())
    }

    fn get(&self, key: &IdempotencyKey, now: SystemTime) -> Option<IdempotencyRecord> {
        let key = self.digester.digest(key);
        let record = self.records.get(&key).filter(|r| r.is_live(now))?;
        Some(match record.clone() {
            Record::Claim {
                fingerprint,
                token,
                expires_at,
            } => IdempotencyRecord::InProgress {
                fingerprint,
                token,
                expires_at,
            },
            Record::Completed(completed) => IdempotencyRecord::Completed(completed),
        })
    }

    fn purge_expired(&mut self, now: SystemTime) -> u64 {
        let before = self.records.len();
        self.records.retain(|_, record| record.is_live(now));
        (before - self.records.len()) as u64
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let now = self.clock.now();
        self.records()
            .claim(key, fingerprint, now + lease, now, self.max_records)
    }

    async fn renew(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        extend_by: Duration,
    ) -> Result<(), StoreError> {
        let expires_at = self.clock.now() + extend_by;
        self.records().with_claim(key, token, |fingerprint| {
            Some(Record::Claim {
                fingerprint,
                token,
                expires_at,
            })
        })
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let expires_at = self.clock.now() + retention;
        self.records().with_claim(key, token, |fingerprint| {
            Some(Record::Completed(CompletedRecord {
                fingerprint,
                response: response.clone(),
                expires_at,
            }))
        })
    }

    async fn release(&self, key: &IdempotencyKey, token: FencingToken) -> Result<(), StoreError> {
        self.records().with_claim(key, token, |_| None)
    }

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.records().get(key, self.clock.now()))
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(self.records().purge_expired(self.clock.now()))
    }
}
