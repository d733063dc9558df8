//! Cases for idempotency claims and stored responses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use super::Case;
use super::support::{
    LONG_LEASE, PAST_SHORT_LEASE, SHORT_LEASE, assert_lease_lost, cases, rich_headers, unique,
};
use crate::store::{
    ClaimOutcome, FencingToken, Fingerprint, IdempotencyKey, IdempotencyRecord, IdempotencyStore,
    StoredResponse,
};

type Records = Arc<dyn IdempotencyStore>;

pub(super) fn cases() -> Vec<Case<dyn IdempotencyStore>> {
    cases![
        claim_then_in_progress,
        claim_race_has_one_winner,
        complete_then_replay,
        release_lets_next_claim_run,
        expired_claim_is_taken_over,
        renew_keeps_claim_alive,
        expired_completed_record_reclaimable,
        purge_expired_keeps_live_records,
        keys_differ_by_every_part,
    ]
}

const RACERS: usize = 50;
const FINGERPRINT: Fingerprint = Fingerprint([7; 32]);
const OTHER_FINGERPRINT: Fingerprint = Fingerprint([9; 32]);
const RETENTION: Duration = Duration::from_secs(3_600);

fn key() -> IdempotencyKey {
    IdempotencyKey {
        principal: Some(unique("kid")),
        method: "POST".to_owned(),
        path: "/orders".to_owned(),
        key: unique("key"),
    }
}

fn response() -> StoredResponse {
    StoredResponse {
        status: StatusCode::CREATED,
        headers: rich_headers(),
        body: Bytes::from_static(b"{\"id\":42}\xff"),
    }
}

async fn claim_token(store: &Records, key: &IdempotencyKey, lease: Duration) -> FencingToken {
    match store.claim(key, FINGERPRINT, lease).await.unwrap() {
        ClaimOutcome::Claimed(token) => token,
        other => panic!("expected a claim, found {other:?}"),
    }
}

async fn claim_then_in_progress(store: Records) {
    let key = key();
    assert_eq!(store.get(&key).await.unwrap(), None);
    let token = claim_token(&store, &key, LONG_LEASE).await;

    let second = store
        .claim(&key, OTHER_FINGERPRINT, LONG_LEASE)
        .await
        .unwrap();

    let expected = ClaimOutcome::InProgress {
        fingerprint: FINGERPRINT,
    };
    assert_eq!(second, expected, "the second claim must see the first");
    match store.get(&key).await.unwrap() {
        Some(IdempotencyRecord::InProgress {
            fingerprint,
            token: current,
            ..
        }) => {
            assert_eq!(fingerprint, FINGERPRINT);
            assert_eq!(current, token);
        }
        other => panic!("expected an in-progress record, found {other:?}"),
    }
}

async fn claim_race_has_one_winner(store: Records) {
    let key = key();
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.claim(&key, FINGERPRINT, LONG_LEASE).await })
        })
        .collect();

    let mut winners = 0;
    for racer in racers {
        match racer.await.expect("racer panicked").unwrap() {
            ClaimOutcome::Claimed(_) => winners += 1,
            ClaimOutcome::InProgress { fingerprint } => assert_eq!(fingerprint, FINGERPRINT),
            ClaimOutcome::Completed(record) => {
                panic!("no racer completed, but a claim returned {record:?}")
            }
        }
    }
    assert_eq!(winners, 1, "{winners} of {RACERS} concurrent claims won");
}

async fn complete_then_replay(store: Records) {
    let key = key();
    let token = claim_token(&store, &key, LONG_LEASE).await;

    store
        .complete(&key, token, &response(), RETENTION)
        .await
        .unwrap();

    let replay = match store.claim(&key, FINGERPRINT, LONG_LEASE).await.unwrap() {
        ClaimOutcome::Completed(record) => record,
        other => panic!("expected the completed record, found {other:?}"),
    };
    assert_eq!(replay.fingerprint, FINGERPRINT);
    assert_eq!(replay.response.status, StatusCode::CREATED);
    assert_eq!(replay.response.body, response().body);
    let links: Vec<_> = replay.response.headers.get_all("link").iter().collect();
    assert_eq!(
        links,
        ["<a>; rel=next", "<b>; rel=prev"],
        "repeated header values"
    );
    assert_eq!(replay.response.headers["x-raw"].as_bytes(), b"caf\xe9");
    assert_eq!(replay.response.headers, rich_headers());

    let stored = store.get(&key).await.unwrap();
    assert_eq!(stored, Some(IdempotencyRecord::Completed(replay)));
    assert_lease_lost(store.release(&key, token).await, "release after complete");
}

async fn release_lets_next_claim_run(store: Records) {
    let key = key();
    let first = claim_token(&store, &key, LONG_LEASE).await;

    store.release(&key, first).await.unwrap();

    assert_eq!(store.get(&key).await.unwrap(), None);
    let second = claim_token(&store, &key, LONG_LEASE).await;
    assert_ne!(second, first, "a new claim reused a released token");
    let completed = store.complete(&key, first, &response(), RETENTION).await;
    assert_lease_lost(completed, "complete with a released token");
    store
        .complete(&key, second, &response(), RETENTION)
        .await
        .unwrap();
}

async fn expired_claim_is_taken_over(store: Records) {
    let key = key();
    let old = claim_token(&store, &key, SHORT_LEASE).await;
    tokio::time::sleep(PAST_SHORT_LEASE).await;

    assert_eq!(
        store.get(&key).await.unwrap(),
        None,
        "an expired claim counts as absent"
    );
    let new = claim_token(&store, &key, LONG_LEASE).await;

    assert_ne!(new, old);
    assert_lease_lost(store.renew(&key, old, LONG_LEASE).await, "renew");
    let completed = store.complete(&key, old, &response(), RETENTION).await;
    assert_lease_lost(completed, "complete");
    assert_lease_lost(store.release(&key, old).await, "release");
    store
        .complete(&key, new, &response(), RETENTION)
        .await
        .unwrap();
}

async fn renew_keeps_claim_alive(store: Records) {
    let key = key();
    let token = claim_token(&store, &key, SHORT_LEASE).await;

    tokio::time::sleep(Duration::from_millis(150)).await;
    store
        .renew(&key, token, Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(PAST_SHORT_LEASE).await;

    let second = store
        .claim(&key, OTHER_FINGERPRINT, LONG_LEASE)
        .await
        .unwrap();
    let expected = ClaimOutcome::InProgress {
        fingerprint: FINGERPRINT,
    };
    assert_eq!(second, expected, "a renewed claim was taken over");
    store
        .complete(&key, token, &response(), RETENTION)
        .await
        .unwrap();
}

async fn expired_completed_record_reclaimable(store: Records) {
    let key = key();
    let token = claim_token(&store, &key, LONG_LEASE).await;
    store
        .complete(&key, token, &response(), SHORT_LEASE)
        .await
        .unwrap();
    tokio::time::sleep(PAST_SHORT_LEASE).await;

    assert_eq!(
        store.get(&key).await.unwrap(),
        None,
        "an expired record counts as absent"
    );
    let again = claim_token(&store, &key, LONG_LEASE).await;

    assert_ne!(again, token);
}

async fn purge_expired_keeps_live_records(store: Records) {
    let (expired_claim, expired_record, live) = (key(), key(), key());
    claim_token(&store, &expired_claim, SHORT_LEASE).await;
    let token = claim_token(&store, &expired_record, LONG_LEASE).await;
    store
        .complete(&expired_record, token, &response(), SHORT_LEASE)
        .await
        .unwrap();
    let live_token = claim_token(&store, &live, LONG_LEASE).await;
    tokio::time::sleep(PAST_SHORT_LEASE).await;

    // Backends that share one database between cases may purge other
    // cases' expired records too, so the count is a lower bound.
    let purged = store.purge_expired().await.unwrap();

    assert!(purged >= 2, "purged {purged} records, expected at least 2");
    assert!(
        store.get(&live).await.unwrap().is_some(),
        "a live claim was purged"
    );
    store
        .complete(&live, live_token, &response(), RETENTION)
        .await
        .unwrap();
}

async fn keys_differ_by_every_part(store: Records) {
    let base = key();
    claim_token(&store, &base, LONG_LEASE).await;
    let variants = [
        IdempotencyKey {
            principal: None,
            ..base.clone()
        },
        IdempotencyKey {
            method: "PUT".to_owned(),
            ..base.clone()
        },
        IdempotencyKey {
            path: "/invoices".to_owned(),
            ..base.clone()
        },
        IdempotencyKey {
            key: unique("key"),
            ..base.clone()
        },
    ];

    for variant in &variants {
        let outcome = store.claim(variant, FINGERPRINT, LONG_LEASE).await.unwrap();
        assert!(
            matches!(outcome, ClaimOutcome::Claimed(_)),
            "{variant:?} shared a record with {base:?}"
        );
    }
}
