//! Cases for claims, leases and fencing tokens.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::Case;
use super::support::{
    LONG_LEASE, PAST_SHORT_LEASE, SHORT_LEASE, assert_lease_lost, cases, message, messages, unique,
};
use crate::MessageId;
use crate::store::{MessageQueue, MessageState};

type Queue = Arc<dyn MessageQueue>;

pub(super) fn cases() -> Vec<Case<dyn MessageQueue>> {
    cases![
        claim_is_exclusive,
        expired_lease_is_taken_over,
        late_write_by_old_holder_refused,
        expired_untaken_lease_still_completes,
        renew_keeps_lease_alive,
        renew_after_takeover_refused,
        token_grows_on_every_claim,
    ]
}

const CLAIMERS: usize = 4;
const EXCLUSIVE_MESSAGES: usize = 1_000;

async fn claim_is_exclusive(store: Queue) {
    let queue = unique("exclusive");
    let sent = messages(&queue, EXCLUSIVE_MESSAGES);
    for chunk in sent.chunks(100) {
        store.enqueue(chunk.to_vec()).await.unwrap();
    }

    let claimers: Vec<_> = (0..CLAIMERS)
        .map(|_| tokio::spawn(claim_until_empty(store.clone(), queue.clone())))
        .collect();
    let mut seen = HashSet::new();
    for claimer in claimers {
        for id in claimer.await.expect("claimer panicked") {
            assert!(seen.insert(id), "message {id} was claimed twice");
        }
    }

    let expected: HashSet<MessageId> = sent.iter().map(|m| m.id).collect();
    assert_eq!(seen.len(), EXCLUSIVE_MESSAGES, "every message claimed once");
    assert_eq!(seen, expected);
    let counts = store.counts(&queue).await.unwrap();
    assert_eq!(counts.succeeded, EXCLUSIVE_MESSAGES as u64);
}

async fn claim_until_empty(store: Queue, queue: String) -> Vec<MessageId> {
    let mut claimed_ids = Vec::new();
    loop {
        let claimed = store.claim(&queue, 16, LONG_LEASE).await.unwrap();
        if claimed.is_empty() {
            return claimed_ids;
        }
        for claim in claimed {
            store.complete(&claim.lease, None).await.unwrap();
            claimed_ids.push(claim.message.id);
        }
    }
}

async fn expired_lease_is_taken_over(store: Queue) {
    let queue = unique("takeover");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();
    let first = store.claim(&queue, 1, SHORT_LEASE).await.unwrap();
    assert!(
        store
            .claim(&queue, 1, SHORT_LEASE)
            .await
            .unwrap()
            .is_empty(),
        "lease still live"
    );

    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let second = store.claim(&queue, 1, LONG_LEASE).await.unwrap();

    assert_eq!(second.len(), 1, "the expired lease was not taken over");
    assert_eq!(second[0].message.id, sent.id);
    assert_eq!(second[0].message.attempts, 2);
    assert!(second[0].lease.token > first[0].lease.token);
    assert!(second[0].lease.expires_at > first[0].lease.expires_at);
}

async fn late_write_by_old_holder_refused(store: Queue) {
    let queue = unique("late-write");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();
    let old = store.claim(&queue, 1, SHORT_LEASE).await.unwrap()[0].lease;
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let new = store.claim(&queue, 1, LONG_LEASE).await.unwrap()[0].lease;

    let later = std::time::SystemTime::now();
    assert_lease_lost(store.complete(&old, None).await, "complete");
    assert_lease_lost(store.fail(&old, "late", None).await, "fail");
    assert_lease_lost(store.dead_letter(&old, "late", None).await, "dead_letter");
    assert_lease_lost(store.reschedule(&old, later, "late").await, "reschedule");
    assert_lease_lost(store.release(&old).await, "release");

    let stored = store.get(sent.id).await.unwrap().unwrap();
    assert_eq!(
        stored.state,
        MessageState::InFlight,
        "old holder changed the message"
    );
    assert_eq!(stored.last_error, None);
    store.complete(&new, None).await.unwrap();
    assert_lease_lost(store.complete(&new, None).await, "a second complete");
}

async fn expired_untaken_lease_still_completes(store: Queue) {
    let queue = unique("slow-worker");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();
    let lease = store.claim(&queue, 1, SHORT_LEASE).await.unwrap()[0].lease;

    tokio::time::sleep(PAST_SHORT_LEASE).await;
    store.complete(&lease, None).await.unwrap();

    let stored = store.get(sent.id).await.unwrap().unwrap();
    assert_eq!(stored.state, MessageState::Succeeded);
    assert!(store.claim(&queue, 1, LONG_LEASE).await.unwrap().is_empty());
}

async fn renew_keeps_lease_alive(store: Queue) {
    let queue = unique("renew");
    store.enqueue(messages(&queue, 1)).await.unwrap();
    let lease = store.claim(&queue, 1, SHORT_LEASE).await.unwrap()[0].lease;

    tokio::time::sleep(Duration::from_millis(150)).await;
    let renewed = store.renew(&lease, Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(PAST_SHORT_LEASE).await;

    assert_eq!(renewed.id, lease.id);
    assert_eq!(renewed.token, lease.token, "a renewal keeps the token");
    assert!(renewed.expires_at > lease.expires_at);
    let taken = store.claim(&queue, 1, LONG_LEASE).await.unwrap();
    assert!(taken.is_empty(), "a renewed lease was taken over");
    store.complete(&renewed, None).await.unwrap();
}

async fn renew_after_takeover_refused(store: Queue) {
    let queue = unique("renew-late");
    store.enqueue(messages(&queue, 1)).await.unwrap();
    let old = store.claim(&queue, 1, SHORT_LEASE).await.unwrap()[0].lease;
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let new = store.claim(&queue, 1, LONG_LEASE).await.unwrap()[0].lease;

    assert_lease_lost(store.renew(&old, LONG_LEASE).await, "renew");

    let renewed = store.renew(&new, LONG_LEASE).await.unwrap();
    assert_eq!(renewed.token, new.token);
}

async fn token_grows_on_every_claim(store: Queue) {
    let queue = unique("token");
    store.enqueue(messages(&queue, 1)).await.unwrap();
    let first = store.claim(&queue, 1, LONG_LEASE).await.unwrap()[0].lease;
    store.release(&first).await.unwrap();
    let second = store.claim(&queue, 1, LONG_LEASE).await.unwrap()[0].lease;
    store
        .reschedule(&second, std::time::SystemTime::now(), "retry")
        .await
        .unwrap();
    let third = store.claim(&queue, 1, LONG_LEASE).await.unwrap()[0].lease;

    assert!(second.token > first.token);
    assert!(third.token > second.token);
    assert_lease_lost(
        store.complete(&first, None).await,
        "complete with a released lease",
    );
}
