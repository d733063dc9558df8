//! Cases for the replay guard.

use std::sync::Arc;
use std::time::Duration;

use super::Case;
use super::support::{PAST_SHORT_LEASE, SHORT_LEASE, cases, unique};
use crate::store::ReplayStore;

type Guard = Arc<dyn ReplayStore>;

pub(super) fn cases() -> Vec<Case<dyn ReplayStore>> {
    cases![
        second_insert_is_replay,
        insert_race_has_one_winner,
        pair_expires_after_ttl,
    ]
}

const RACERS: usize = 50;
const TTL: Duration = Duration::from_secs(600);

async fn second_insert_is_replay(store: Guard) {
    let (kid, nonce) = (unique("kid"), unique("nonce"));

    assert!(store.insert(&kid, &nonce, TTL).await.unwrap());
    assert!(
        !store.insert(&kid, &nonce, TTL).await.unwrap(),
        "replay accepted"
    );
    assert!(
        store.insert(&unique("kid"), &nonce, TTL).await.unwrap(),
        "other kid"
    );
    assert!(
        store.insert(&kid, &unique("nonce"), TTL).await.unwrap(),
        "other nonce"
    );
}

async fn insert_race_has_one_winner(store: Guard) {
    let (kid, nonce) = (unique("kid"), unique("nonce"));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, kid, nonce) = (store.clone(), kid.clone(), nonce.clone());
            tokio::spawn(async move { store.insert(&kid, &nonce, TTL).await })
        })
        .collect();

    let mut winners = 0;
    for racer in racers {
        if racer.await.expect("racer panicked").unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "{winners} of {RACERS} concurrent inserts won");
}

async fn pair_expires_after_ttl(store: Guard) {
    let (kid, nonce) = (unique("kid"), unique("nonce"));
    assert!(store.insert(&kid, &nonce, SHORT_LEASE).await.unwrap());
    assert!(!store.insert(&kid, &nonce, SHORT_LEASE).await.unwrap());

    tokio::time::sleep(PAST_SHORT_LEASE).await;

    assert!(
        store.insert(&kid, &nonce, TTL).await.unwrap(),
        "expired pair still blocks"
    );
}
