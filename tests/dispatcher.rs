//! The outbox dispatcher on SQLite files: schedules, limits, restarts,
//! several dispatchers, and a dispatcher killed while holding leases.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Receiver, always, client, sequence};
use http::Method;
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::ServiceExt;
use tower_courier::MessageId;
use tower_courier::outbox::Dispatcher;
use tower_courier::retry::Backoff;
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::store::{FencingToken, Lease, MessageQueue, MessageState, NewMessage};

/// The environment variable that turns one test into the child dispatcher
/// of `killed_dispatcher_taken_over`.
const CHILD_ENV: &str = "COURIER_TEST_CHILD_DISPATCHER";

async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn MessageQueue> {
    Arc::new(
        SqliteStore::open(dir.path().join("outbox.db"))
            .await
            .unwrap(),
    )
}

fn quick_backoff() -> Backoff {
    Backoff::default()
        .initial_delay(Duration::from_millis(200))
        .min_delay(Duration::from_millis(50))
        .max_delay(Duration::from_secs(1))
}

fn dispatcher(store: Arc<dyn MessageQueue>) -> Dispatcher {
    Dispatcher::new(store, client())
        .backoff(quick_backoff())
        .poll_interval(Duration::from_millis(50))
        .attempt_timeout(Duration::from_secs(2))
}

fn message(destination: &str, body: &str) -> NewMessage {
    let mut message = NewMessage::new(
        "outbox",
        destination,
        Method::POST,
        "/events",
        SystemTime::now(),
    );
    let key = message.id.to_string();
    message
        .headers
        .insert("idempotency-key", key.parse().unwrap());
    message.body = Bytes::from(body.to_owned());
    message
}

async fn enqueue_one(store: &Arc<dyn MessageQueue>, destination: &str) -> MessageId {
    let message = message(destination, "{}");
    let id = message.id;
    store.enqueue(vec![message]).await.unwrap();
    id
}

async fn wait_for_state(store: &Arc<dyn MessageQueue>, id: MessageId, state: MessageState) {
    for _ in 0..400 {
        let message = store.get(id).await.unwrap().expect("message is stored");
        if message.state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = store.get(id).await.unwrap();
    panic!("message never reached {state}: {message:?}");
}

fn answer_with_retry_after(value: String) -> common::Script {
    Arc::new(move |index| {
        let mut response = common::status(if index == 0 { 503 } else { 200 });
        if index == 0 {
            response
                .headers_mut()
                .insert("retry-after", value.parse().unwrap());
        }
        response
    })
}

#[tokio::test]
async fn retry_after_seconds_delays_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let receiver = Receiver::start(answer_with_retry_after("3".to_owned())).await;
    let id = enqueue_one(&store, &receiver.url("")).await;

    let handle = dispatcher(store.clone())
        .backoff(quick_backoff().max_delay(Duration::from_secs(10)))
        .spawn();
    wait_for_state(&store, id, MessageState::Succeeded).await;
    handle.shutdown().await;

    let received = receiver.received();
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(3), "next attempt after {gap:?}");
}

#[tokio::test]
async fn retry_after_date_delays_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    // An HTTP-date has whole seconds, so the next whole second plus 3 is at
    // least 3 s ahead.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(now + 4));
    let receiver = Receiver::start(answer_with_retry_after(date)).await;
    let id = enqueue_one(&store, &receiver.url("")).await;

    let handle = dispatcher(store.clone())
        .backoff(quick_backoff().max_delay(Duration::from_secs(10)))
        .spawn();
    wait_for_state(&store, id, MessageState::Succeeded).await;
    handle.shutdown().await;

    let received = receiver.received();
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(3), "next attempt after {gap:?}");
}

#[tokio::test]
async fn retry_after_capped_by_max_delay() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let receiver = Receiver::start(answer_with_retry_after("3600".to_owned())).await;
    let id = enqueue_one(&store, &receiver.url("")).await;

    let handle = dispatcher(store.clone()).spawn();
    wait_for_state(&store, id, MessageState::Succeeded).await;
    handle.shutdown().await;

    let received = receiver.received();
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(1), "next attempt after {gap:?}");
    assert!(gap < Duration::from_secs(5), "next attempt after {gap:?}");
}

#[tokio::test]
async fn max_attempts_then_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let receiver = Receiver::start(always(500)).await;
    let id = enqueue_one(&store, &receiver.url("")).await;

    let handle = dispatcher(store.clone())
        .backoff(quick_backoff().max_attempts(3))
        .spawn();
    wait_for_state(&store, id, MessageState::Dead).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    handle.shutdown().await;

    assert_eq!(receiver.count(), 3);
    let message = store.get(id).await.unwrap().unwrap();
    assert_eq!(message.attempts, 3);
    let last_error = message.last_error.unwrap();
    assert!(last_error.contains("500"), "{last_error}");
    assert!(last_error.contains("3 attempt"), "{last_error}");
    assert_eq!(message.outcome.unwrap().status, 500);
    assert_eq!(handle.metrics().dead_lettered, 1);
    assert_eq!(handle.metrics().retried, 2);
}

#[tokio::test]
async fn restart_mid_backoff_keeps_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let receiver = Receiver::start(sequence(&[503, 200])).await;
    let id = enqueue_one(&store, &receiver.url("")).await;
    let slow = quick_backoff()
        .initial_delay(Duration::from_secs(2))
        .min_delay(Duration::from_secs(1))
        .max_delay(Duration::from_secs(2));

    let first = dispatcher(store.clone()).backoff(slow).spawn();
    while receiver.count() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_state(&store, id, MessageState::Pending).await;
    first.shutdown().await;
    drop(store);

    let store = sqlite_store(&dir).await;
    let second = dispatcher(store.clone()).spawn();
    wait_for_state(&store, id, MessageState::Succeeded).await;
    second.shutdown().await;

    let keys: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(keys, [Some(id.to_string()), Some(id.to_string())]);
    assert_eq!(first.metrics().retried, 1);
    assert_eq!(second.metrics().delivered, 1);
}

#[tokio::test]
async fn enqueue_wakes_idle_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let receiver = Receiver::start(always(200)).await;
    let handle = dispatcher(store.clone())
        .poll_interval(Duration::from_secs(60))
        .spawn();
    // The dispatcher's first claim finds nothing and it goes idle.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let enqueued = std::time::Instant::now();
    let id = enqueue_one(&store, &receiver.url("")).await;
    wait_for_state(&store, id, MessageState::Succeeded).await;
    let waited = enqueued.elapsed();
    handle.shutdown().await;

    assert!(
        waited < Duration::from_secs(5),
        "delivered after {waited:?}"
    );
    assert_eq!(receiver.count(), 1);
}

/// A receiver that delays every response until more requests are open at
/// once than one dispatcher sends at once, so a test can tell that two
/// dispatchers both took part. After `timeout` it responds anyway.
struct GatedReceiver {
    addr: std::net::SocketAddr,
    keys: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedReceiver {
    async fn start(open_before_answering: usize, timeout: Duration) -> Self {
        let keys: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let log = keys.clone();
        let handler = move |request: axum::extract::Request| {
            let (log, arrived, gate) = (log.clone(), arrived.clone(), gate.clone());
            async move {
                let key = request.headers()["idempotency-key"].to_str().unwrap();
                log.lock().unwrap().push(key.to_owned());

                // Made before counting, so a notification between the two
                // steps still reaches it.
                let opened = gate.notified();
                let count = arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if count >= open_before_answering {
                    gate.notify_waiters();
                } else {
                    let _ = tokio::time::timeout(timeout, opened).await;
                }
                http::StatusCode::OK
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().fallback(handler);
        let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { addr, keys, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for GatedReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_deliver_each_once() {
    const CONCURRENCY: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    // One dispatcher has at most 16 requests open, so the 17th comes from
    // the other one, and only then does the receiver respond.
    let receiver = GatedReceiver::start(CONCURRENCY + 1, Duration::from_secs(20)).await;
    let messages: Vec<_> = (0..500)
        .map(|n| message(&receiver.url(), &n.to_string()))
        .collect();
    store.enqueue(messages).await.unwrap();

    let other = sqlite_store(&dir).await;
    let spawn = |store| {
        dispatcher(store)
            .lease(Duration::from_secs(30))
            .attempt_timeout(Duration::from_secs(30))
            .batch_size(CONCURRENCY)
            .concurrency(CONCURRENCY)
            .spawn()
    };
    let (first, second) = (spawn(store.clone()), spawn(other));
    for _ in 0..1200 {
        if store.counts("outbox").await.unwrap().succeeded == 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (one, two) = (first.metrics(), second.metrics());
    first.shutdown().await;
    second.shutdown().await;

    let mut per_key: HashMap<String, usize> = HashMap::new();
    for key in receiver.keys.lock().unwrap().iter() {
        *per_key.entry(key.clone()).or_default() += 1;
    }
    assert_eq!(per_key.len(), 500);
    assert!(
        per_key.values().all(|count| *count == 1),
        "a message was sent twice"
    );
    assert_eq!(one.delivered + two.delivered, 500);
    assert!(one.delivered > 0, "first dispatcher idle: {one:?}");
    assert!(two.delivered > 0, "second dispatcher idle: {two:?}");
    assert_eq!(one.lease_lost + two.lease_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_dispatcher_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let (addr, silent) = common::silent_receiver().await;
    let messages: Vec<_> = (0..5)
        .map(|n| message(&format!("http://{addr}"), &n.to_string()))
        .collect();
    let ids: Vec<MessageId> = messages.iter().map(|message| message.id).collect();
    store.enqueue(messages).await.unwrap();

    // The child dispatcher sends to a receiver that never responds, so it
    // holds every lease until it is killed.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_dispatcher",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path().join("outbox.db"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut held: HashMap<MessageId, FencingToken> = HashMap::new();
    while held.len() < ids.len() {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("child printed its leases");
        // The harness prints `test child_dispatcher ... ` without a newline
        // before the first line of the test's own output.
        if let Some((_, rest)) = line.split_once("LEASE ") {
            let (id, token) = rest.split_once(' ').unwrap();
            held.insert(id.parse().unwrap(), FencingToken(token.parse().unwrap()));
        }
    }
    child.kill().await.unwrap();

    // The receiver recovers at the same address, and a second dispatcher
    // takes the messages over once the child's leases expire.
    silent.abort();
    let _ = silent.await;
    let receiver = Receiver::start_on(addr, always(200), Arc::default()).await;
    let survivor = dispatcher(store.clone()).spawn();
    for id in &ids {
        wait_for_state(&store, *id, MessageState::Succeeded).await;
    }
    survivor.shutdown().await;

    assert_eq!(receiver.count(), 5);
    assert_eq!(survivor.metrics().delivered, 5);
    for (id, token) in held {
        let late = Lease {
            id,
            token,
            expires_at: SystemTime::now() + Duration::from_secs(30),
        };
        let error = store.complete(&late, None).await.unwrap_err();
        assert!(error.is_lease_lost(), "{error}");

        let message = store.get(id).await.unwrap().unwrap();
        assert_eq!(message.state, MessageState::Succeeded);
        assert_eq!(message.attempts, 2);
    }
}

/// Runs the child process of `killed_dispatcher_taken_over`: a dispatcher
/// with a 1 s lease that prints each lease it sends under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as the child process of killed_dispatcher_taken_over"]
async fn child_dispatcher() {
    let path = std::env::var_os(CHILD_ENV).expect("the parent test sets the store path");
    let store: Arc<dyn MessageQueue> = Arc::new(SqliteStore::open(path).await.unwrap());
    let printing = tower::service_fn(|request: http::Request<http_body_util::Full<Bytes>>| {
        let lease = *request
            .extensions()
            .get::<Lease>()
            .expect("the worker adds the lease");
        println!("LEASE {} {}", lease.id, lease.token.0);
        client().oneshot(request)
    });
    let _handle = Dispatcher::new(store, printing)
        .lease(Duration::from_secs(1))
        .attempt_timeout(Duration::from_secs(3600))
        .spawn();
    std::future::pending::<()>().await;
}
