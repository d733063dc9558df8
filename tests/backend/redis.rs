//! Trials of the Redis store: the shared scenarios on its Lua scripts, and
//! the pub/sub wake-ups only it has.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Trial;
use tower_courier::store::conformance::Suite;
use tower_courier::store::redis::{RedisOptions, RedisStore};
use tower_courier::store::{MessageQueue, MessageState, Store, StoreErrorKind};

use crate::scenarios::*;
use crate::support::{capture_warnings, run_id, server_url, trial, unique_name};

const VARIABLE: &str = "TOWER_COURIER_REDIS_URL";

/// Returns the conformance suite and the Redis-specific trials.
pub(crate) fn trials() -> Vec<Trial> {
    let url = server_url(VARIABLE);
    let mut trials = conformance(url.clone());
    let url = url.as_deref();
    trials.extend(vec![
        scenario("redis_message_round_trips", url, |s| message_round_trips(s)),
        scenario("redis_duplicate_ids_skipped", url, |s| {
            duplicate_ids_skipped(s)
        }),
        scenario("redis_concurrent_duplicates_stored_once", url, |s| {
            concurrent_duplicates_stored_once(s)
        }),
        scenario("redis_concurrent_claims_disjoint", url, |s| {
            concurrent_claims_disjoint(s)
        }),
        scenario("redis_expired_lease_fenced", url, |s| {
            expired_lease_fenced(s)
        }),
        scenario("redis_list_count_purge_retry", url, |s| {
            list_count_purge_retry(s)
        }),
        scenario("redis_idempotency_claim_race", url, |s| {
            idempotency_claim_race(s)
        }),
        scenario("redis_idempotency_lifecycle", url, |s| {
            idempotency_lifecycle(s)
        }),
        scenario("redis_idempotency_release_reopens", url, |s| {
            idempotency_release_reopens(s)
        }),
        scenario("redis_replay_insert_race", url, |s| replay_insert_race(s)),
        trial(
            "redis_publish_wakes_other_store",
            url,
            VARIABLE,
            publish_wakes_other_store,
        ),
        trial(
            "redis_subscriber_survives_kill",
            url,
            VARIABLE,
            subscriber_survives_kill,
        ),
        durability_warnings_logged(url),
        trial(
            "redis_purge_spans_batches",
            url,
            VARIABLE,
            purge_spans_batches,
        ),
        trial(
            "redis_empty_prefix_rejected",
            url,
            VARIABLE,
            empty_prefix_rejected,
        ),
        trial("redis_store_connect_url", url, VARIABLE, store_connect_url),
    ]);
    trials
}

/// Returns the store conformance suite, each case on a fresh key prefix.
fn conformance(url: Option<String>) -> Vec<Trial> {
    let suite = Suite::new("redis");
    let Some(url) = url else {
        return suite
            .store(|| async { Err("unreachable: every trial is ignored".into()) })
            .ignore_all(format!("set {VARIABLE} to run"))
            .into_trials();
    };
    suite
        .store(move || {
            let url = url.clone();
            async move { Ok(Store::new(open(&url).await)) }
        })
        .into_trials()
}

/// Returns a trial that runs a shared scenario on a store with a fresh
/// key prefix.
fn scenario<F, Fut>(name: &str, url: Option<&str>, test: F) -> Trial
where
    F: FnOnce(Arc<RedisStore>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    trial(name, url, VARIABLE, move |url| async move {
        let store = Arc::new(open(&url).await);
        let prefix = store.prefix().to_owned();
        test(store).await;
        delete_keys(&url, &prefix).await;
    })
}

/// Returns the key prefix of this run: `TOWER_COURIER_REDIS_PREFIX` (CI
/// sets it, to delete a run's keys afterwards) or `test:`, then the run id.
fn run_prefix() -> String {
    let root = std::env::var("TOWER_COURIER_REDIS_PREFIX").unwrap_or_else(|_| "test:".into());
    format!("{root}{}:", run_id())
}

/// Deletes every key this run created, including those of the
/// conformance suite, which has no teardown of its own.
pub(crate) fn clean_up() {
    let Some(url) = server_url(VARIABLE) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime must start");
    runtime.block_on(delete_keys(&url, &run_prefix()));
}

/// Opens a store with a fresh key prefix under this run's prefix.
async fn open(url: &str) -> RedisStore {
    let options = RedisOptions::new().prefix(format!("{}:", unique_name(&run_prefix())));
    RedisStore::connect_with(url, options)
        .await
        .expect("the test redis server must accept connections")
}

/// Deletes every key under `prefix`, so passing trials leave nothing.
async fn delete_keys(url: &str, prefix: &str) {
    let mut admin = connection(url).await;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut admin)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

async fn second_store(url: &str, first: &RedisStore) -> RedisStore {
    let options = RedisOptions::new().prefix(first.prefix());
    RedisStore::connect_with(url, options).await.unwrap()
}

async fn publish_wakes_other_store(url: String) {
    let listening = open(&url).await;
    let writing = second_store(&url, &listening).await;
    let mut subscription = listening.subscribe("outbox");
    let channel = format!("{}wake", listening.prefix());
    let mut admin = connection(&url).await;
    wait_for_subscribers(&mut admin, &channel, 2).await;

    writing.enqueue(vec![message("other")]).await.unwrap();
    assert!(!subscription.wait(Duration::from_millis(300)).await);
    writing.enqueue(vec![message("outbox")]).await.unwrap();
    assert!(subscription.wait(Duration::from_secs(5)).await);
}

async fn subscriber_survives_kill(url: String) {
    // Other trials' subscribers come and go meanwhile, so the store runs in
    // a database number of its own, which `CLIENT LIST` shows per client.
    let url = with_database(&url, 9);
    let mut admin = connection(&url).await;
    let before = pubsub_client_ids(&mut admin).await;
    let listening = open(&url).await;
    let channel = format!("{}wake", listening.prefix());
    wait_for_subscribers(&mut admin, &channel, 1).await;
    let ours: Vec<_> = pubsub_client_ids(&mut admin)
        .await
        .difference(&before)
        .copied()
        .collect();
    assert_eq!(ours.len(), 1, "exactly one new subscriber in database 9");

    let writing = second_store(&url, &listening).await;
    let mut subscription = listening.subscribe("outbox");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(ours[0])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    // Both stores subscribe; the killed one must come back.
    wait_for_subscribers(&mut admin, &channel, 2).await;

    // The reconnect itself wakes subscribers; drain that wake-up so the
    // next one can only come from the published message.
    while subscription.wait(Duration::from_millis(300)).await {}
    writing.enqueue(vec![message("outbox")]).await.unwrap();
    assert!(subscription.wait(Duration::from_secs(5)).await);
    delete_keys(&url, listening.prefix()).await;
}

/// Returns `url` with its database number replaced by `database`.
fn with_database(url: &str, database: u8) -> String {
    let (scheme, rest) = url.split_once("://").expect("a redis:// url");
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{database}")
}

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// Returns the ids of the subscribed clients in database 9.
async fn pubsub_client_ids(admin: &mut redis::aio::MultiplexedConnection) -> HashSet<u64> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(admin)
        .await
        .unwrap();
    list.lines()
        .filter(|line| line.contains(" db=9 "))
        .filter_map(|line| line.strip_prefix("id="))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// Waits until `count` clients subscribe to `channel`.
async fn wait_for_subscribers(
    admin: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    count: i64,
) {
    for _ in 0..100 {
        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(admin)
            .await
            .unwrap();
        if subscribers == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{channel} did not reach {count} subscribers within 10 s");
}

async fn purge_spans_batches(url: String) {
    let store = open(&url).await;
    // More than one purge script deletes (1,000), so the loop must run.
    let messages: Vec<_> = (0..2_050).map(|_| message("bulk")).collect();
    store.enqueue(messages).await.unwrap();

    let later = std::time::SystemTime::now() + Duration::from_secs(3_600);
    let purged = store.purge("bulk", MessageState::Pending, later).await;

    assert_eq!(purged.unwrap(), 2_050);
    assert_eq!(store.counts("bulk").await.unwrap().pending, 0);
    let claimed = store.claim("bulk", 10, Duration::from_secs(30)).await;
    assert!(
        claimed.unwrap().is_empty(),
        "purged ids left in the due set"
    );
    delete_keys(&url, store.prefix()).await;
}

async fn empty_prefix_rejected(url: String) {
    let error = RedisStore::connect_with(&url, RedisOptions::new().prefix(""))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Invalid);
}

async fn store_connect_url(url: String) {
    let store = Store::connect(&url).await.unwrap();
    assert!(format!("{store:?}").contains("RedisStore"));
    let counts = store.queue().counts(&unique_name("q")).await.unwrap();
    assert_eq!(counts.pending, 0);
}

/// Returns a trial on warnings captured now, before other trials run (see
/// `capture_warnings` for why).
fn durability_warnings_logged(url: Option<&str>) -> Trial {
    let name = "redis_durability_warnings_logged";
    let Some(url) = url.map(str::to_owned) else {
        return trial(name, None, VARIABLE, |_| async {});
    };
    let captured = capture_warnings(async move {
        let store = open(&url).await;
        delete_keys(&url, store.prefix()).await;
        let admin = connection(&url).await;
        let config = |name: &'static str| {
            let mut admin = admin.clone();
            async move {
                let pair: (String, String) = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                pair.1
            }
        };
        let appendonly = config("appendonly").await;
        let policy = config("maxmemory-policy").await;
        (appendonly, policy)
    });

    Trial::test(name, move || {
        let ((appendonly, policy), warnings) = captured?;
        let mentions = |word: &str| warnings.iter().any(|warning| warning.contains(word));
        assert_eq!(mentions("appendonly"), appendonly != "yes", "{warnings:?}");
        assert_eq!(
            mentions("maxmemory-policy"),
            policy != "noeviction",
            "{warnings:?}"
        );
        Ok(())
    })
}
