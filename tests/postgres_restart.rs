//! A dispatcher on PostgreSQL survives a restart of the server: producers
//! keep enqueueing, the store's pool and listener reconnect, and every
//! message reaches a loopback receiver exactly once.
//!
//! The trial restarts the machine's PostgreSQL cluster with
//! `pg_ctlcluster`, which breaks every other session on the server. So it
//! runs only when `TOWER_COURIER_PG_RESTART=1` is set along with
//! `TOWER_COURIER_POSTGRES_URL` and the `postgres` feature. Otherwise it
//! is reported as ignored with the reason. Run it alone:
//!
//! ```text
//! TOWER_COURIER_PG_RESTART=1 cargo test --features postgres --test postgres_restart
//! ```

mod support;

use libtest_mimic::{Arguments, Completion, Trial};

const NAME: &str = "pg_restart_dispatcher_recovers";

fn main() {
    let arguments = Arguments::from_args();
    let trial = match ignore_reason() {
        Some(reason) => Trial::ignorable_test(NAME, move || Ok(Completion::ignored_with(reason))),
        #[cfg(feature = "postgres")]
        None => Trial::test(NAME, || {
            restart::run();
            Ok(())
        }),
        #[cfg(not(feature = "postgres"))]
        None => unreachable!("without the postgres feature there is always a reason"),
    };
    libtest_mimic::run(&arguments, vec![trial]).exit();
}

/// Returns why the trial cannot run here, if it cannot.
fn ignore_reason() -> Option<String> {
    if cfg!(not(feature = "postgres")) {
        return Some(
            "built without the postgres feature: run cargo test --features postgres \
             --test postgres_restart"
                .to_owned(),
        );
    }
    if support::server_url("TOWER_COURIER_POSTGRES_URL").is_none() {
        return Some("set TOWER_COURIER_POSTGRES_URL to run".to_owned());
    }
    if std::env::var("TOWER_COURIER_PG_RESTART").as_deref() != Ok("1") {
        return Some(
            "restarts the PostgreSQL server: set TOWER_COURIER_PG_RESTART=1 to run".to_owned(),
        );
    }
    None
}

#[cfg(feature = "postgres")]
mod restart {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime};

    use axum::extract::Request;
    use http::{HeaderValue, Method, StatusCode};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use sqlx::AssertSqlSafe;
    use tokio::net::TcpListener;
    use tower_courier::outbox::Dispatcher;
    use tower_courier::store::postgres::{PostgresOptions, PostgresStore};
    use tower_courier::store::{MessageQueue, NewMessage};

    use crate::support::{capture_all_warnings, server_url, unique_name};

    /// Messages enqueued before, during and after the restart.
    const MESSAGES: usize = 400;

    /// The pause between two enqueues, so that enqueueing spans the
    /// restart.
    const ENQUEUE_PAUSE: Duration = Duration::from_millis(10);

    /// How many messages are enqueued before the restart begins.
    const BEFORE_RESTART: usize = 100;

    /// The receiver's time per request, so that sends are in flight when
    /// the server goes down.
    const RECEIVER_DELAY: Duration = Duration::from_millis(20);

    /// The dispatcher's fallback poll: longer than the wait for the last
    /// deliveries, so that they need the listener's wake-ups.
    const LONG_POLL: Duration = Duration::from_secs(60);

    /// How long the deliveries may take after the last enqueue: less than
    /// [`LONG_POLL`], so they cannot wait for the fallback poll.
    const DELIVERY_WAIT: Duration = Duration::from_secs(45);

    /// Runs the scenario, and prints the warnings the crate logged during
    /// the restart, which show what failed and recovered.
    pub(super) fn run() {
        let (enqueue_failures, warnings) = match capture_all_warnings(survive_restart()) {
            Ok(output) => output,
            Err(panic) => panic!("{panic}"),
        };
        let mut counted: HashMap<&str, usize> = HashMap::new();
        for warning in &warnings {
            *counted.entry(warning.as_str()).or_default() += 1;
        }
        eprintln!("enqueues retried during the restart: {enqueue_failures}");
        for (warning, count) in counted {
            eprintln!("warning logged {count} time(s): {warning}");
        }
        assert!(
            warnings.iter().any(|warning| warning.contains("listener")),
            "the listener logged no lost connection, so the restart did not reach it"
        );
    }

    /// Returns how many enqueues failed and were retried.
    async fn survive_restart() -> usize {
        let url = server_url("TOWER_COURIER_POSTGRES_URL").expect("checked by main");
        let schema = unique_name("restart_");
        let options = PostgresOptions::new().schema(&schema);
        let producer = PostgresStore::connect_with(&url, options.clone())
            .await
            .unwrap();
        let consumer = PostgresStore::connect_with(&url, options).await.unwrap();
        let first_listener = listener_pid(&consumer, 0).await;

        let (address, seen) = start_receiver().await;
        let queue: Arc<dyn MessageQueue> = Arc::new(consumer.clone());
        let client = Client::builder(TokioExecutor::new()).build_http();
        let running = Dispatcher::new(queue, client)
            .poll_interval(LONG_POLL)
            .lease(Duration::from_secs(5))
            .concurrency(8)
            .attempt_timeout(Duration::from_secs(5))
            .spawn();

        let producing = tokio::spawn(produce(producer.clone(), address));
        wait_until(
            Duration::from_secs(30),
            "the first messages to be delivered",
            || seen.lock().unwrap().len() >= BEFORE_RESTART / 2,
        )
        .await;
        restart_server().await;
        let enqueue_failures = producing.await.unwrap();

        let second_listener = listener_pid(&consumer, first_listener).await;
        assert_ne!(second_listener, first_listener);
        wait_until(DELIVERY_WAIT, "every message to be delivered", || {
            seen.lock().unwrap().len() >= MESSAGES
        })
        .await;
        let counts = wait_for_succeeded(&producer).await;
        running.shutdown().await;

        let seen = seen.lock().unwrap().clone();
        let repeated: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
        assert_eq!(seen.len(), MESSAGES, "distinct keys received");
        assert!(
            repeated.is_empty(),
            "keys received more than once: {repeated:?}"
        );
        assert_eq!(
            counts.pending + counts.in_flight + counts.dead + counts.failed,
            0
        );

        let drop = format!("DROP SCHEMA {schema} CASCADE");
        sqlx::query(AssertSqlSafe(drop))
            .execute(producer.pool())
            .await
            .unwrap();
        enqueue_failures
    }

    /// Enqueues [`MESSAGES`] messages one at a time, retrying each one
    /// until the store accepts it, and returns how many enqueues failed.
    async fn produce(store: PostgresStore, receiver: SocketAddr) -> usize {
        let mut failures = 0;
        for _ in 0..MESSAGES {
            let message = message(receiver);
            // Retrying with the same id is safe: if a failed enqueue did
            // commit, the retry is skipped as a duplicate.
            while let Err(error) = store.enqueue(vec![message.clone()]).await {
                failures += 1;
                eprintln!("enqueue failed, retrying: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(ENQUEUE_PAUSE).await;
        }
        failures
    }

    fn message(receiver: SocketAddr) -> NewMessage {
        let destination = format!("http://{receiver}");
        let mut message = NewMessage::new(
            "outbox",
            destination,
            Method::POST,
            "/events",
            SystemTime::now(),
        );
        let key = HeaderValue::from_str(&message.id.to_string()).unwrap();
        message.headers.insert("idempotency-key", key);
        message
    }

    /// Starts a receiver that counts requests by `Idempotency-Key`.
    async fn start_receiver() -> (SocketAddr, Arc<Mutex<HashMap<String, usize>>>) {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let counts = seen.clone();
        let handler = move |request: Request| {
            let counts = counts.clone();
            async move {
                tokio::time::sleep(RECEIVER_DELAY).await;
                let Some(key) = request.headers().get("idempotency-key") else {
                    return StatusCode::BAD_REQUEST;
                };
                let key = key.to_str().unwrap().to_owned();
                *counts.lock().unwrap().entry(key).or_insert(0) += 1;
                StatusCode::OK
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new().fallback(handler);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (address, seen)
    }

    /// Restarts the PostgreSQL cluster and waits until it accepts
    /// connections again.
    async fn restart_server() {
        let command = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart";
        let status = tokio::process::Command::new("sh")
            .args(["-c", command])
            .status()
            .await
            .expect("sh must start");
        assert!(status.success(), "{command} failed: {status}");

        wait_until(
            Duration::from_secs(30),
            "pg_isready after the restart",
            || {
                std::process::Command::new("pg_isready")
                    .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
                    .status()
                    .is_ok_and(|status| status.success())
            },
        )
        .await;
    }

    /// Waits until `store`'s listener backend, other than `old_pid`, is
    /// listening, and returns its process id.
    async fn listener_pid(store: &PostgresStore, old_pid: i32) -> i32 {
        let name = format!("courier-listen {}", store.schema());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid: Result<Option<i32>, _> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> $2 AND query LIKE 'LISTEN%'",
            )
            .bind(&name)
            .bind(old_pid)
            .fetch_optional(store.pool())
            .await;
            if let Ok(Some(pid)) = pid {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no new listener {name:?} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every message succeeded in the store, so that none is
    /// left in flight to be sent again, and returns the final counts.
    ///
    /// NOTE: a claim whose commit succeeds just before the server ends the
    /// session leaves its messages in flight with no dispatcher, so they
    /// wait for the 5 s lease and then for the fallback poll or the next
    /// enqueue's wake-up. This trial would then time out; the window is a
    /// few microseconds per restart.
    async fn wait_for_succeeded(store: &PostgresStore) -> tower_courier::store::QueueCounts {
        let deadline = Instant::now() + DELIVERY_WAIT;
        loop {
            let counts = store.counts("outbox").await.unwrap();
            if counts.succeeded as usize == MESSAGES {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "not every message succeeded: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
