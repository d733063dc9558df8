//! Kills a process that enqueues through `SqliteStore` with SIGKILL at a
//! random moment, then checks that every acknowledged message survived
//! whole and that no batch was half written.
//!
//! The test binary runs itself as the writer: with `COURIER_DURABILITY_DB`
//! set, `main` enqueues until killed and prints each acknowledged id.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use tower_courier::MessageId;
use tower_courier::store::conformance::libtest_mimic::{self, Arguments, Failed, Trial};
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::store::{Message, MessageQueue, MessageState, NewMessage};

const DATABASE_VARIABLE: &str = "COURIER_DURABILITY_DB";
const QUEUE: &str = "durability";
const ROUNDS: usize = 5;
const PRODUCERS: usize = 16;

fn main() {
    if let Ok(path) = std::env::var(DATABASE_VARIABLE) {
        write_until_killed(Path::new(&path));
        return;
    }
    let trial = Trial::test("acknowledged_messages_survive_sigkill", || {
        survive_sigkill().map_err(Failed::from)
    });
    libtest_mimic::run(&Arguments::from_args(), vec![trial]).exit();
}

/// Returns the body that every message with `id` carries: 512 bytes that
/// depend on the id, so a torn or mixed-up row cannot pass the check.
fn expected_body(id: MessageId) -> Bytes {
    id.to_bytes().repeat(32).into()
}

fn expected_headers(id: MessageId) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.append(
        "x-message-id",
        HeaderValue::from_str(&id.to_string()).unwrap(),
    );
    headers.append("link", HeaderValue::from_static("<a>; rel=next"));
    headers.append("link", HeaderValue::from_static("<b>; rel=prev"));
    headers.append("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    headers
}

/// Builds a batch of `size` messages that name their batch in metadata.
fn batch(size: usize) -> Vec<NewMessage> {
    let ids: Vec<MessageId> = (0..size).map(|_| MessageId::new()).collect();
    ids.iter()
        .map(|id| {
            let now = SystemTime::now();
            let mut message = NewMessage::new(QUEUE, "http://127.0.0.1:9", Method::POST, "/d", now);
            message.id = *id;
            message.body = expected_body(*id);
            message.headers = expected_headers(*id);
            message.metadata.insert("batch".into(), ids[0].to_string());
            message.metadata.insert("size".into(), size.to_string());
            message
        })
        .collect()
}

/// Runs the child: enqueues batches of 1 to 4 messages from many tasks and
/// prints each id once its enqueue returned.
fn write_until_killed(path: &Path) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(path).await.expect("open the database");
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| tokio::spawn(produce(store.clone(), producer)))
            .collect();
        for producer in producers {
            producer.await.expect("producer panicked");
        }
    });
}

async fn produce(store: SqliteStore, producer: usize) {
    for round in 0.. {
        let messages = batch(1 + (producer + round) % 4);
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        store.enqueue(messages).await.expect("enqueue");

        let mut stdout = std::io::stdout().lock();
        for id in ids {
            writeln!(stdout, "{id}").expect("write to the parent");
        }
        stdout.flush().expect("flush to the parent");
    }
}

fn survive_sigkill() -> Result<(), String> {
    let directory = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = directory.path().join("durability.db");
    let mut acknowledged = HashSet::new();

    for round in 0..ROUNDS {
        let acked = run_and_kill(&path)?;
        println!(
            "round {round}: {} messages acknowledged before SIGKILL",
            acked.len()
        );
        acknowledged.extend(acked);
        check_file(&path, &acknowledged)?;
    }
    Ok(())
}

/// Starts a writer, kills it at a random moment after its first
/// acknowledgement, and returns the ids it acknowledged.
fn run_and_kill(path: &Path) -> Result<Vec<MessageId>, String> {
    let executable = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(executable)
        .env(DATABASE_VARIABLE, path)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the writer process: {e}"))?;

    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || read_complete_lines(stdout, lines));

    let first = received
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "the writer acknowledged nothing within 30 s".to_owned())?;
    std::thread::sleep(Duration::from_millis(rand::random_range(20..600)));
    child
        .kill()
        .map_err(|e| format!("cannot kill the writer: {e}"))?;
    child.wait().map_err(|e| e.to_string())?;

    reader.join().expect("reader thread panicked");
    let mut acked = vec![first];
    acked.extend(received.try_iter());
    acked
        .iter()
        .map(|line| {
            line.parse()
                .map_err(|_| format!("the writer printed {line:?}"))
        })
        .collect()
}

/// Sends each line that ended with a newline; a line cut by the kill is
/// not an acknowledgement.
fn read_complete_lines(stdout: impl std::io::Read, lines: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        if line.ends_with(b"\n") {
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            let _ = lines.send(text);
        }
        line.clear();
    }
}

/// Reopens the file and checks every acknowledged message, every stored
/// message and every batch, then checks that claims still work.
fn check_file(path: &Path, acknowledged: &HashSet<MessageId>) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let store = SqliteStore::open(path)
            .await
            .map_err(|e| format!("reopen: {e}"))?;
        let stored = all_messages(&store).await?;

        for id in acknowledged {
            let message = stored
                .get(id)
                .ok_or(format!("acknowledged message {id} is missing"))?;
            check_message(message)?;
        }
        for message in stored.values() {
            check_message(message)?;
        }
        check_batches_whole(&stored)?;
        check_claims_work(&store).await
    })
}

async fn all_messages(store: &SqliteStore) -> Result<HashMap<MessageId, Message>, String> {
    let mut stored = HashMap::new();
    for state in MessageState::ALL {
        let mut after = None;
        loop {
            let page = store
                .list(QUEUE, state, 1_000, after)
                .await
                .map_err(|e| format!("list: {e}"))?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            stored.extend(page.into_iter().map(|message| (message.id, message)));
        }
    }
    Ok(stored)
}

fn check_message(message: &Message) -> Result<(), String> {
    if message.body != expected_body(message.id) {
        return Err(format!("message {} has a torn body", message.id));
    }
    if message.headers != expected_headers(message.id) {
        return Err(format!("message {} has torn headers", message.id));
    }
    Ok(())
}

fn check_batches_whole(stored: &HashMap<MessageId, Message>) -> Result<(), String> {
    let mut members: HashMap<&str, usize> = HashMap::new();
    for message in stored.values() {
        *members.entry(&message.metadata["batch"]).or_default() += 1;
    }
    for message in stored.values() {
        let batch = &message.metadata["batch"];
        let size: usize = message.metadata["size"].parse().map_err(|_| "bad size")?;
        if members[batch.as_str()] != size {
            return Err(format!(
                "batch {batch} has {} of {size} messages",
                members[batch.as_str()]
            ));
        }
    }
    Ok(())
}

async fn check_claims_work(store: &SqliteStore) -> Result<(), String> {
    let claimed = MessageQueue::claim(store, QUEUE, 10, Duration::from_secs(60))
        .await
        .map_err(|e| format!("claim after reopen: {e}"))?;
    if claimed.is_empty() {
        return Err("claim after reopen returned nothing".to_owned());
    }
    for claim in claimed {
        MessageQueue::complete(store, &claim.lease, None)
            .await
            .map_err(|e| format!("complete after reopen: {e}"))?;
    }
    Ok(())
}
