//! The store's statements, with the schema name filled in once.
//!
//! The schema name is checked against `[a-z_][a-z0-9_]*` before it gets
//! here, so formatting it into SQL cannot inject anything. Times cross the
//! wire as microseconds since the Unix epoch (`int8`), which keeps the
//! driver free of date-time features.

use std::sync::Arc;

use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

/// Converts a `timestamptz` column to microseconds since the epoch.
macro_rules! micros {
    ($column:literal) => {
        concat!("(extract(epoch FROM ", $column, ") * 1000000)::int8")
    };
}

/// The columns every message read returns, in the order `row.rs` decodes.
const MESSAGE_COLUMNS: &str = concat!(
    "id::text, queue, destination, method, path_and_query, headers, body, \
     metadata::text, state, attempts, token, ",
    micros!("available_at"),
    ", ",
    micros!("created_at"),
    ", ",
    micros!("updated_at"),
    ", last_error, outcome_status, outcome_body, ",
    micros!("lease_expires_at"),
);

/// The same columns qualified by the table alias `m`.
const MESSAGE_COLUMNS_M: &str = concat!(
    "m.id::text, m.queue, m.destination, m.method, m.path_and_query, m.headers, m.body, \
     m.metadata::text, m.state, m.attempts, m.token, ",
    micros!("m.available_at"),
    ", ",
    micros!("m.created_at"),
    ", ",
    micros!("m.updated_at"),
    ", m.last_error, m.outcome_status, m.outcome_body, ",
    micros!("m.lease_expires_at"),
);

/// Converts bound microseconds since the epoch to `timestamptz`.
macro_rules! from_micros {
    ($param:literal) => {
        concat!(
            "(timestamptz 'epoch' + ",
            $param,
            " * interval '1 microsecond')"
        )
    };
}

/// The statements of one schema.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) channel: String,
    pub(super) insert: Arc<str>,
    pub(super) claim: Arc<str>,
    pub(super) renew: Arc<str>,
    pub(super) finish: Arc<str>,
    pub(super) reschedule: Arc<str>,
    pub(super) release: Arc<str>,
    pub(super) get: Arc<str>,
    pub(super) counts: Arc<str>,
    pub(super) list: Arc<str>,
    pub(super) retry: Arc<str>,
    pub(super) purge: Arc<str>,
    pub(super) idem_claim: Arc<str>,
    pub(super) idem_get: Arc<str>,
    pub(super) idem_renew: Arc<str>,
    pub(super) idem_complete: Arc<str>,
    pub(super) idem_release: Arc<str>,
    pub(super) idem_purge: Arc<str>,
    pub(super) replay_insert: Arc<str>,
    pub(super) replay_sweep: Arc<str>,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Self {
        let s = schema;
        let text = |sql: String| -> Arc<str> { sql.into() };
        Self {
            channel: channel(schema),
            insert: text(format!(
                "WITH ins AS ( \
                   INSERT INTO {s}.messages (id, queue, destination, method, path_and_query, \
                     headers, body, metadata, state, available_at) \
                   SELECT u.id, u.queue, u.destination, u.method, u.path_and_query, u.headers, \
                     u.body, u.metadata::jsonb, 'pending', {available} \
                   FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::bytea[], $8::bytea[], $9::text[], $10::int8[]) \
                     AS u(id, queue, destination, method, path_and_query, headers, body, \
                     metadata, available_us) \
                   ON CONFLICT (id) DO NOTHING \
                   RETURNING id, queue), \
                 woke AS (SELECT pg_notify($1, q.queue) FROM (SELECT DISTINCT queue FROM ins) q) \
                 SELECT id::text FROM ins UNION ALL SELECT NULL FROM woke",
                available = from_micros!("u.available_us"),
            )),
            // Two locking scans, one per partial index, so that each reads
            // rows in index order instead of sorting the whole queue. The
            // outer query keeps the `$2` with the oldest `available_at`.
            claim: text(format!(
                "WITH due AS ( \
                   SELECT id, available_at FROM {s}.messages \
                   WHERE queue = $1 AND state = 'pending' AND available_at <= now() \
                   ORDER BY available_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 expired AS ( \
                   SELECT id, available_at FROM {s}.messages \
                   WHERE queue = $1 AND state = 'in_flight' AND lease_expires_at <= now() \
                   ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 picked AS ( \
                   SELECT id FROM (SELECT * FROM due UNION ALL SELECT * FROM expired) c \
                   ORDER BY available_at LIMIT $2) \
                 UPDATE {s}.messages m SET state = 'in_flight', attempts = m.attempts + 1, \
                   token = m.token + 1, lease_expires_at = now() + {lease}, updated_at = now() \
                 FROM picked WHERE m.id = picked.id \
                 RETURNING {MESSAGE_COLUMNS_M}",
                lease = "$3 * interval '1 microsecond'",
            )),
            renew: text(format!(
                "UPDATE {s}.messages SET lease_expires_at = now() + $3 * interval '1 microsecond' \
                 WHERE id = $1::uuid AND token = $2 AND state = 'in_flight' \
                 RETURNING {}",
                micros!("lease_expires_at"),
            )),
            // Moves claimed messages to final states, one row per array
            // element: id, token, state, error, outcome status and body. The
            // lease check is per row, so a stale token fails only its own.
            finish: text(format!(
                "UPDATE {s}.messages m SET state = u.state, lease_expires_at = NULL, \
                   updated_at = now(), last_error = coalesce(u.error, m.last_error), \
                   outcome_status = u.status, outcome_body = u.body \
                 FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::int2[], \
                   $6::bytea[]) AS u(id, token, state, error, status, body) \
                 WHERE m.id = u.id AND m.token = u.token AND m.state = 'in_flight' \
                 RETURNING m.id::text"
            )),
            reschedule: text(format!(
                "WITH u AS ( \
                   UPDATE {s}.messages SET state = 'pending', lease_expires_at = NULL, \
                     updated_at = now(), available_at = {available}, last_error = $5 \
                   WHERE id = $2::uuid AND token = $3 AND state = 'in_flight' RETURNING queue) \
                 SELECT queue, pg_notify($1, queue)::text FROM u",
                available = from_micros!("$4"),
            )),
            release: text(format!(
                "WITH u AS ( \
                   UPDATE {s}.messages SET state = 'pending', lease_expires_at = NULL, \
                     updated_at = now(), available_at = now(), \
                     attempts = greatest(attempts - 1, 0) \
                   WHERE id = $2::uuid AND token = $3 AND state = 'in_flight' RETURNING queue) \
                 SELECT queue, pg_notify($1, queue)::text FROM u"
            )),
            get: text(format!(
                "SELECT {MESSAGE_COLUMNS} FROM {s}.messages WHERE id = $1::uuid"
            )),
            counts: text(format!(
                "SELECT state, count(*) FROM {s}.messages WHERE queue = $1 GROUP BY state"
            )),
            list: text(format!(
                "SELECT {MESSAGE_COLUMNS} FROM {s}.messages \
                 WHERE queue = $1 AND state = $2 AND ($3::uuid IS NULL OR id > $3::uuid) \
                 ORDER BY id LIMIT $4"
            )),
            retry: text(format!(
                "WITH u AS ( \
                   UPDATE {s}.messages SET state = 'pending', attempts = 0, available_at = now(), \
                     updated_at = now(), lease_expires_at = NULL, outcome_status = NULL, \
                     outcome_body = NULL \
                   WHERE id = $2::uuid AND state IN ('dead', 'failed') RETURNING queue) \
                 SELECT queue, pg_notify($1, queue)::text FROM u"
            )),
            // Deletes at most `$4` rows, so that a large purge runs as
            // several short transactions instead of one long one.
            purge: text(format!(
                "DELETE FROM {s}.messages WHERE id IN ( \
                   SELECT id FROM {s}.messages \
                   WHERE queue = $1 AND state = $2 AND updated_at < {} LIMIT $4)",
                from_micros!("$3"),
            )),
            idem_claim: text(format!(
                "INSERT INTO {s}.idempotency AS r (key, fingerprint, token, completed, expires_at) \
                 VALUES ($1, $2, nextval('{s}.idempotency_tokens'), false, \
                   now() + $3 * interval '1 microsecond') \
                 ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, \
                   token = excluded.token, completed = false, expires_at = excluded.expires_at, \
                   status = NULL, headers = NULL, body = NULL \
                 WHERE r.expires_at <= now() \
                 RETURNING token"
            )),
            idem_get: text(format!(
                "SELECT fingerprint, token, completed, {}, status, headers, body \
                 FROM {s}.idempotency WHERE key = $1 AND expires_at > now()",
                micros!("expires_at"),
            )),
            idem_renew: text(format!(
                "UPDATE {s}.idempotency SET expires_at = now() + $3 * interval '1 microsecond' \
                 WHERE key = $1 AND token = $2 AND NOT completed"
            )),
            idem_complete: text(format!(
                "UPDATE {s}.idempotency SET completed = true, status = $3, headers = $4, \
                   body = $5, expires_at = now() + $6 * interval '1 microsecond' \
                 WHERE key = $1 AND token = $2 AND NOT completed"
            )),
            idem_release: text(format!(
                "DELETE FROM {s}.idempotency WHERE key = $1 AND token = $2 AND NOT completed"
            )),
            idem_purge: text(format!(
                "DELETE FROM {s}.idempotency WHERE expires_at <= now()"
            )),
            replay_insert: text(format!(
                "INSERT INTO {s}.replay_nonces AS r (kid, nonce, expires_at) \
                 VALUES ($1, $2, now() + $3 * interval '1 microsecond') \
                 ON CONFLICT (kid, nonce) DO UPDATE SET expires_at = excluded.expires_at \
                 WHERE r.expires_at <= now() \
                 RETURNING 1"
            )),
            replay_sweep: text(format!(
                "DELETE FROM {s}.replay_nonces WHERE expires_at <= now()"
            )),
        }
    }
}

/// Returns the `LISTEN` channel of `schema`, so that stores in different
/// schemas of one database do not wake each other.
pub(super) fn channel(schema: &str) -> String {
    format!("{schema}_wake")
}

/// Starts a query on one of the statements above.
pub(super) fn query(sql: &Arc<str>) -> Query<'static, Postgres, PgArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}
