//! Creates and migrates the store's schema.
//!
//! Migrations run in one transaction under a transaction-scoped advisory
//! lock keyed by the schema name, so two processes that start at once take
//! turns: the second finds the schema at the latest version and does
//! nothing. The `schema_version` table records each applied version.

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use super::{invalid, query_failed};
use crate::store::StoreError;

/// The advisory lock class of schema migrations: the bytes of "twcr".
const LOCK_CLASS: i32 = 0x7477_6372;

/// The migrations in order; version `n` is `MIGRATIONS[n - 1]`, with `{s}`
/// standing for the schema name.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE {s}.messages (
    id uuid PRIMARY KEY,
    queue text NOT NULL,
    destination text NOT NULL,
    method text NOT NULL,
    path_and_query text NOT NULL,
    headers bytea NOT NULL,
    body bytea NOT NULL,
    metadata jsonb NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    token bigint NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL,
    lease_expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    outcome_status smallint,
    outcome_body bytea
) WITH (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
CREATE INDEX messages_due ON {s}.messages (queue, available_at) WHERE state = 'pending';
CREATE INDEX messages_leased ON {s}.messages (queue, lease_expires_at) WHERE state = 'in_flight';
CREATE INDEX messages_by_state ON {s}.messages (queue, state, id);

CREATE SEQUENCE {s}.idempotency_tokens;
CREATE TABLE {s}.idempotency (
    key text PRIMARY KEY,
    fingerprint bytea NOT NULL,
    token bigint NOT NULL,
    completed boolean NOT NULL,
    expires_at timestamptz NOT NULL,
    status smallint,
    headers bytea,
    body bytea
);
CREATE INDEX idempotency_expiry ON {s}.idempotency (expires_at);

CREATE TABLE {s}.replay_nonces (
    kid text NOT NULL,
    nonce text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (kid, nonce)
);
CREATE INDEX replay_nonces_expiry ON {s}.replay_nonces (expires_at);
"#];

/// Creates the schema if needed and applies the migrations it lacks.
pub(super) async fn migrate(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let fail = |error| query_failed("migrate the schema", error);
    let mut transaction = pool.begin().await.map_err(fail)?;

    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(schema)
        .execute(&mut *transaction)
        .await
        .map_err(fail)?;

    // The advisory lock serialises these statements between processes, so
    // `IF NOT EXISTS` cannot race with another migrating process.
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.schema_version ( \
           version integer PRIMARY KEY, \
           applied_at timestamptz NOT NULL DEFAULT now())"
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(&mut *transaction)
        .await
        .map_err(fail)?;

    let current = current_version(&mut transaction, schema).await?;
    let latest = MIGRATIONS.len();
    if current > latest {
        return Err(invalid(format!(
            "postgres schema {schema} is at version {current}, newer than the {latest} \
             this version of tower-courier supports; upgrade tower-courier"
        )));
    }

    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        apply(&mut transaction, schema, migration, version).await?;
        tracing::info!(schema, version, "migrated the postgres store schema");
    }
    transaction.commit().await.map_err(fail)
}

async fn current_version(
    transaction: &mut sqlx::PgTransaction<'_>,
    schema: &str,
) -> Result<usize, StoreError> {
    let sql = format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version");
    let row = sqlx::query(AssertSqlSafe(sql))
        .fetch_one(&mut **transaction)
        .await
        .map_err(|error| query_failed("read the schema version", error))?;
    let version: i32 = row
        .try_get(0)
        .map_err(|error| query_failed("read the schema version", error))?;
    Ok(usize::try_from(version).unwrap_or(0))
}

async fn apply(
    transaction: &mut sqlx::PgTransaction<'_>,
    schema: &str,
    migration: &str,
    version: usize,
) -> Result<(), StoreError> {
    let fail = |error| query_failed("migrate the schema", error);
    let migration = migration.replace("{s}", schema);
    sqlx::raw_sql(AssertSqlSafe(migration))
        .execute(&mut **transaction)
        .await
        .map_err(fail)?;

    let record = format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)");
    sqlx::query(AssertSqlSafe(record))
        .bind(version as i32)
        .execute(&mut **transaction)
        .await
        .map_err(fail)?;
    Ok(())
}

/// Logs a warning when the server's autovacuum is off, because the
/// messages table then keeps every dead row version until a manual
/// `VACUUM`. A server that hides the setting gets one debug line instead.
pub(super) async fn warn_without_autovacuum(pool: &PgPool) {
    let setting = sqlx::query("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<String, _>(0));
    match setting {
        Ok(setting) if setting == "off" => tracing::warn!(
            "postgres autovacuum is off: the messages table keeps about three dead row \
             versions per message until VACUUM runs; turn autovacuum on or schedule VACUUM"
        ),
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "cannot read the autovacuum setting"),
    }
}
