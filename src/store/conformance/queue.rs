//! Cases for enqueueing, state transitions, inspection and purging.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;

use super::Case;
use super::support::{LONG_LEASE, assert_same_millis, cases, message, messages, unique};
use crate::MessageId;
use crate::store::{MessageQueue, MessageState, Outcome, QueueCounts};

type Queue = Arc<dyn MessageQueue>;

pub(super) fn cases() -> Vec<Case<dyn MessageQueue>> {
    cases![
        enqueued_message_round_trips,
        enqueue_existing_id_is_ignored,
        enqueue_duplicate_in_batch_is_ignored,
        claim_returns_due_oldest_first,
        claim_respects_limit,
        reschedule_returns_to_pending,
        release_does_not_count_attempt,
        complete_keeps_outcome,
        fail_marks_failed,
        dead_letter_then_retry,
        retry_ignores_live_messages,
        counts_by_state,
        list_pages_in_id_order,
        purge_deletes_old_finished,
        subscribe_wakes_on_enqueue,
    ]
}

async fn enqueued_message_round_trips(store: Queue) {
    let queue = unique("round-trip");
    let sent = message(&queue);

    assert_eq!(store.enqueue(vec![sent.clone()]).await.unwrap(), [true]);
    let stored = store.get(sent.id).await.unwrap().expect("enqueued message");

    assert_eq!(stored.queue, sent.queue);
    assert_eq!(stored.destination, sent.destination);
    assert_eq!(stored.method, sent.method);
    assert_eq!(stored.path_and_query, sent.path_and_query);
    assert_eq!(stored.headers, sent.headers);
    assert_eq!(stored.body, sent.body);
    assert_eq!(stored.metadata, sent.metadata);
    assert_eq!(stored.state, MessageState::Pending);
    assert_eq!(stored.attempts, 0);
    assert_eq!(stored.last_error, None);
    assert_eq!(stored.outcome, None);
    assert_same_millis(stored.available_at, sent.available_at, "available_at");

    let claimed = store.claim(&queue, 1, LONG_LEASE).await.unwrap();
    assert_eq!(
        claimed[0].message.headers, sent.headers,
        "headers after claim"
    );
    assert_eq!(claimed[0].message.body, sent.body, "body after claim");
}

async fn enqueue_existing_id_is_ignored(store: Queue) {
    let queue = unique("existing-id");
    let first = message(&queue);
    store.enqueue(vec![first.clone()]).await.unwrap();

    let mut second = message(&queue);
    second.id = first.id;
    second.body = Bytes::from_static(b"replacement");
    let other = message(&queue);

    let stored = store.enqueue(vec![second, other.clone()]).await.unwrap();

    assert_eq!(stored, [false, true]);
    let kept = store.get(first.id).await.unwrap().unwrap();
    assert_eq!(
        kept.body, first.body,
        "the existing message was overwritten"
    );
    assert!(store.get(other.id).await.unwrap().is_some());
    assert_eq!(store.counts(&queue).await.unwrap().pending, 2);
}

async fn enqueue_duplicate_in_batch_is_ignored(store: Queue) {
    let queue = unique("batch-duplicate");
    let first = message(&queue);
    let mut again = message(&queue);
    again.id = first.id;
    again.body = Bytes::from_static(b"second copy");

    let stored = store.enqueue(vec![first.clone(), again]).await.unwrap();

    assert_eq!(stored, [true, false]);
    let kept = store.get(first.id).await.unwrap().unwrap();
    assert_eq!(kept.body, first.body);
    assert_eq!(store.counts(&queue).await.unwrap().pending, 1);
}

async fn claim_returns_due_oldest_first(store: Queue) {
    let queue = unique("due-order");
    let now = SystemTime::now();
    let mut later = message(&queue);
    later.available_at = now - Duration::from_secs(1);
    let mut earlier = message(&queue);
    earlier.available_at = now - Duration::from_secs(5);
    let mut future = message(&queue);
    future.available_at = now + Duration::from_secs(3_600);
    store
        .enqueue(vec![later.clone(), earlier.clone(), future])
        .await
        .unwrap();

    let claimed = store.claim(&queue, 10, LONG_LEASE).await.unwrap();

    let ids: Vec<MessageId> = claimed.iter().map(|c| c.message.id).collect();
    assert_eq!(ids, [earlier.id, later.id], "due messages, oldest first");
    assert!(
        claimed
            .iter()
            .all(|c| c.message.state == MessageState::InFlight)
    );
    assert!(claimed.iter().all(|c| c.message.attempts == 1));
    assert!(claimed.iter().all(|c| c.lease.id == c.message.id));
    assert!(
        store
            .claim(&queue, 10, LONG_LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn claim_respects_limit(store: Queue) {
    let queue = unique("limit");
    store.enqueue(messages(&queue, 5)).await.unwrap();

    assert_eq!(store.claim(&queue, 3, LONG_LEASE).await.unwrap().len(), 3);
    assert_eq!(store.claim(&queue, 3, LONG_LEASE).await.unwrap().len(), 2);
    assert!(
        store
            .claim(&unique("other"), 3, LONG_LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn reschedule_returns_to_pending(store: Queue) {
    let queue = unique("reschedule");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();
    let claimed = store.claim(&queue, 1, LONG_LEASE).await.unwrap();

    let due = SystemTime::now() + Duration::from_millis(400);
    store
        .reschedule(&claimed[0].lease, due, "503 from receiver")
        .await
        .unwrap();

    let stored = store.get(sent.id).await.unwrap().unwrap();
    assert_eq!(stored.state, MessageState::Pending);
    assert_eq!(stored.attempts, 1, "a rescheduled attempt stays counted");
    assert_eq!(stored.last_error.as_deref(), Some("503 from receiver"));
    assert_same_millis(stored.available_at, due, "available_at");
    assert!(store.claim(&queue, 1, LONG_LEASE).await.unwrap().is_empty());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = store.claim(&queue, 1, LONG_LEASE).await.unwrap();
    assert_eq!(again.len(), 1, "the rescheduled message is due again");
    assert_eq!(again[0].message.attempts, 2);
}

async fn release_does_not_count_attempt(store: Queue) {
    let queue = unique("release");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();
    let claimed = store.claim(&queue, 1, LONG_LEASE).await.unwrap();

    store.release(&claimed[0].lease).await.unwrap();

    let stored = store.get(sent.id).await.unwrap().unwrap();
    assert_eq!(stored.state, MessageState::Pending);
    assert_eq!(stored.attempts, 0);
    let again = store.claim(&queue, 1, LONG_LEASE).await.unwrap();
    assert_eq!(again.len(), 1, "a released message is due at once");
    assert_eq!(again[0].message.attempts, 1);
}

async fn complete_keeps_outcome(store: Queue) {
    let queue = unique("complete");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();
    let claimed = store.claim(&queue, 1, LONG_LEASE).await.unwrap();
    let outcome = Outcome {
        status: StatusCode::CREATED,
        body: Bytes::from_static(b"created\xff"),
    };

    store
        .complete(&claimed[0].lease, Some(outcome.clone()))
        .await
        .unwrap();

    let stored = store.get(sent.id).await.unwrap().unwrap();
    assert_eq!(stored.state, MessageState::Succeeded);
    assert_eq!(stored.outcome, Some(outcome));
    assert!(store.claim(&queue, 1, LONG_LEASE).await.unwrap().is_empty());
}

async fn fail_marks_failed(store: Queue) {
    let queue = unique("fail");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();
    let claimed = store.claim(&queue, 1, LONG_LEASE).await.unwrap();
    let outcome = Outcome {
        status: StatusCode::BAD_REQUEST,
        body: Bytes::from_static(b"bad order"),
    };

    store
        .fail(
            &claimed[0].lease,
            "400 from receiver",
            Some(outcome.clone()),
        )
        .await
        .unwrap();

    let stored = store.get(sent.id).await.unwrap().unwrap();
    assert_eq!(stored.state, MessageState::Failed);
    assert_eq!(stored.last_error.as_deref(), Some("400 from receiver"));
    assert_eq!(stored.outcome, Some(outcome));
    assert!(store.claim(&queue, 1, LONG_LEASE).await.unwrap().is_empty());
    assert!(
        store.retry(sent.id).await.unwrap(),
        "a failed message can be retried"
    );
}

async fn dead_letter_then_retry(store: Queue) {
    let queue = unique("dead");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();
    let claimed = store.claim(&queue, 1, LONG_LEASE).await.unwrap();

    store
        .dead_letter(&claimed[0].lease, "too many attempts", None)
        .await
        .unwrap();

    let dead = store
        .list(&queue, MessageState::Dead, 10, None)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, sent.id);
    assert_eq!(dead[0].last_error.as_deref(), Some("too many attempts"));
    assert_eq!(dead[0].body, sent.body);
    assert!(store.claim(&queue, 1, LONG_LEASE).await.unwrap().is_empty());

    assert!(store.retry(sent.id).await.unwrap());

    let retried = store.get(sent.id).await.unwrap().unwrap();
    assert_eq!(retried.state, MessageState::Pending);
    assert_eq!(retried.attempts, 0, "a retry resets the attempt count");
    let again = store.claim(&queue, 1, LONG_LEASE).await.unwrap();
    assert_eq!(again.len(), 1, "a retried message is due at once");
    assert_eq!(again[0].message.attempts, 1);
}

async fn retry_ignores_live_messages(store: Queue) {
    let queue = unique("retry-live");
    let sent = message(&queue);
    store.enqueue(vec![sent.clone()]).await.unwrap();

    assert!(
        !store.retry(sent.id).await.unwrap(),
        "retry of a pending message"
    );
    store.claim(&queue, 1, LONG_LEASE).await.unwrap();
    assert!(
        !store.retry(sent.id).await.unwrap(),
        "retry of an in-flight message"
    );
    assert!(
        !store.retry(MessageId::new()).await.unwrap(),
        "retry of an unknown id"
    );
    let stored = store.get(sent.id).await.unwrap().unwrap();
    assert_eq!(stored.state, MessageState::InFlight);
}

async fn counts_by_state(store: Queue) {
    let queue = unique("counts");
    store.enqueue(messages(&queue, 6)).await.unwrap();
    let claimed = store.claim(&queue, 4, LONG_LEASE).await.unwrap();
    store.complete(&claimed[0].lease, None).await.unwrap();
    store.fail(&claimed[1].lease, "bad", None).await.unwrap();
    store
        .dead_letter(&claimed[2].lease, "dead", None)
        .await
        .unwrap();

    let counts = store.counts(&queue).await.unwrap();

    let expected = QueueCounts {
        pending: 2,
        in_flight: 1,
        succeeded: 1,
        failed: 1,
        dead: 1,
    };
    assert_eq!(counts, expected);
    assert_eq!(
        store.counts(&unique("empty")).await.unwrap(),
        QueueCounts::default()
    );
}

async fn list_pages_in_id_order(store: Queue) {
    let queue = unique("list");
    let sent = messages(&queue, 5);
    let mut ids: Vec<MessageId> = sent.iter().map(|m| m.id).collect();
    ids.sort();
    store.enqueue(sent).await.unwrap();

    let first = store
        .list(&queue, MessageState::Pending, 2, None)
        .await
        .unwrap();
    let after = Some(first[1].id);
    let rest = store
        .list(&queue, MessageState::Pending, 10, after)
        .await
        .unwrap();

    let first_ids: Vec<MessageId> = first.iter().map(|m| m.id).collect();
    let rest_ids: Vec<MessageId> = rest.iter().map(|m| m.id).collect();
    assert_eq!(first_ids, ids[..2]);
    assert_eq!(rest_ids, ids[2..]);
    assert!(
        store
            .list(&queue, MessageState::Dead, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn purge_deletes_old_finished(store: Queue) {
    let queue = unique("purge");
    let other = unique("purge-other");
    store.enqueue(messages(&queue, 3)).await.unwrap();
    store.enqueue(messages(&other, 1)).await.unwrap();
    let claimed = store.claim(&queue, 3, LONG_LEASE).await.unwrap();
    store.complete(&claimed[0].lease, None).await.unwrap();
    store.complete(&claimed[1].lease, None).await.unwrap();
    let other_claimed = store.claim(&other, 1, LONG_LEASE).await.unwrap();
    store.complete(&other_claimed[0].lease, None).await.unwrap();

    let before_finish = SystemTime::now() - Duration::from_secs(60);
    let kept = store
        .purge(&queue, MessageState::Succeeded, before_finish)
        .await
        .unwrap();
    assert_eq!(kept, 0, "messages finished after older_than are kept");

    let later = SystemTime::now() + Duration::from_secs(60);
    assert_eq!(
        store
            .purge(&queue, MessageState::Succeeded, later)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .purge(&queue, MessageState::InFlight, later)
            .await
            .unwrap(),
        0
    );

    assert!(store.get(claimed[0].message.id).await.unwrap().is_none());
    assert!(store.get(claimed[2].message.id).await.unwrap().is_some());
    assert_eq!(store.counts(&queue).await.unwrap().in_flight, 1);
    assert_eq!(
        store.counts(&other).await.unwrap().succeeded,
        1,
        "other queue kept"
    );
}

async fn subscribe_wakes_on_enqueue(store: Queue) {
    let queue = unique("wake");
    let mut subscription = store.subscribe(&queue);

    store.enqueue(messages(&queue, 1)).await.unwrap();

    assert!(
        subscription.wait(Duration::from_secs(5)).await,
        "no wake-up after enqueue"
    );
}
