//! The `LISTEN` task that turns notifications into local wake-ups.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::Shared;

/// The first wait before reconnecting after an error; it doubles up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Returns the `application_name` of the listener's connection, which
/// identifies its backend in `pg_stat_activity` for operators and tests.
/// It fits PostgreSQL's 63-byte limit with the longest schema name (48).
pub(super) fn application_name(schema: &str) -> String {
    format!("courier-listen {schema}")
}

/// Listens until the store is dropped, which aborts this task.
pub(super) async fn run(shared: Arc<Shared>, options: PgConnectOptions) {
    // A pool of one connection, separate from the store's pool so that a
    // held `LISTEN` connection never starves queries.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut state = State {
        backoff: MIN_BACKOFF,
        connected_before: false,
    };

    loop {
        let error = listen(&shared, &pool, &mut state).await;
        tracing::warn!(
            schema = %shared.schema,
            %error,
            retry_in_ms = state.backoff.as_millis() as u64,
            "postgres listener failed; wake-ups fall back to polling until it reconnects"
        );
        tokio::time::sleep(state.backoff).await;
        state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
    }
}

struct State {
    backoff: Duration,
    connected_before: bool,
}

/// Connects, listens and forwards notifications until an error.
///
/// `PgListener` reconnects by itself after an I/O error and reports the gap
/// as `Ok(None)`. Other errors, such as the server's "terminating
/// connection" message, end this call so that the caller starts over.
async fn listen(shared: &Shared, pool: &PgPool, state: &mut State) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(error) => return error,
    };
    if let Err(error) = listener.listen(&shared.sql.channel).await {
        return error;
    }
    state.backoff = MIN_BACKOFF;
    if state.connected_before {
        tracing::warn!(schema = %shared.schema, "postgres listener reconnected");
        wake_all(shared);
    } else {
        tracing::debug!(schema = %shared.schema, "postgres listener connected");
        state.connected_before = true;
    }

    loop {
        let received = match listener.try_recv().await {
            Ok(received) => received,
            Err(error) => return error,
        };
        match received {
            Some(notification) => shared.notifier.notify(notification.payload()),
            None => {
                tracing::warn!(
                    schema = %shared.schema,
                    "postgres listener connection lost and reconnected"
                );
                wake_all(shared);
            }
        }
    }
}

/// Wakes every subscribed queue, because notifications sent while the
/// listener was away are lost and their messages may be due.
fn wake_all(shared: &Shared) {
    for queue in shared.subscribed_queues() {
        shared.notifier.notify(&queue);
    }
}
