//! The pub/sub task that turns published queue names into local wake-ups.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::Shared;

/// The first wait before reconnecting after an error; it doubles up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Subscribes until the store is dropped, which aborts this task.
pub(super) async fn run(shared: Arc<Shared>, client: redis::Client) {
    let mut backoff = MIN_BACKOFF;
    let mut connected_before = false;

    loop {
        let outcome = subscribe(&shared, &client, &mut connected_before, &mut backoff).await;
        match outcome {
            Ok(()) => tracing::warn!(
                prefix = %shared.prefix,
                "redis subscriber connection closed; wake-ups fall back to polling until it reconnects"
            ),
            Err(error) => tracing::warn!(
                prefix = %shared.prefix,
                %error,
                retry_in_ms = backoff.as_millis() as u64,
                "redis subscriber failed; wake-ups fall back to polling until it reconnects"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects, subscribes and forwards messages until the connection ends.
async fn subscribe(
    shared: &Shared,
    client: &redis::Client,
    connected_before: &mut bool,
    backoff: &mut Duration,
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&shared.channel).await?;
    *backoff = MIN_BACKOFF;
    if *connected_before {
        // Messages published while disconnected are lost, so every queue
        // may have due messages that no wake-up announced.
        tracing::warn!(prefix = %shared.prefix, "redis subscriber reconnected");
        for queue in shared.subscribed_queues() {
            shared.notifier.notify(&queue);
        }
    } else {
        tracing::debug!(prefix = %shared.prefix, "redis subscriber connected");
        *connected_before = true;
    }

    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        match std::str::from_utf8(message.get_payload_bytes()) {
            Ok(queue) => shared.notifier.notify(queue),
            Err(_) => tracing::debug!("ignored a non-UTF-8 wake-up payload"),
        }
    }
    Ok(())
}
