//! Several instances on one PostgreSQL database: two senders (each with
//! its dispatcher) and two receivers deliver 5,000 commands, each handled
//! once, also when one dispatcher is killed mid-run.
//!
//! Runs when `TOWER_COURIER_POSTGRES_URL` names a database, such as
//! `postgres://postgres@127.0.0.1:5432/test`, and the tests are built with
//! `--features postgres`. Each test creates its own database on that
//! server and drops it at the end. The examples run as processes.

mod process;
mod support;

use std::time::Duration;

use libtest_mimic::{Arguments, Trial};

#[cfg(feature = "postgres")]
const VARIABLE: &str = "TOWER_COURIER_POSTGRES_URL";

fn main() {
    let arguments = Arguments::from_args();
    libtest_mimic::run(&arguments, trials()).exit();
}

#[cfg(not(feature = "postgres"))]
fn trials() -> Vec<Trial> {
    let reason =
        "built without the postgres feature: run cargo test --features postgres --test instances";
    let trial = Trial::ignorable_test("several_instances", move || {
        Ok(libtest_mimic::Completion::ignored_with(reason))
    });
    vec![trial]
}

#[cfg(feature = "postgres")]
fn trials() -> Vec<Trial> {
    let url = support::server_url(VARIABLE);
    vec![
        support::trial("two_of_each_handle_once", url.as_deref(), VARIABLE, |url| {
            scenario::two_of_each(url, false)
        }),
        support::trial(
            "dispatcher_killed_handle_once",
            url.as_deref(),
            VARIABLE,
            |url| scenario::two_of_each(url, true),
        ),
    ]
}

/// The wait before the first sender is killed, after it stored its
/// commands.
#[allow(dead_code)]
const KILL_AFTER: Duration = Duration::from_millis(1_500);

#[cfg(feature = "postgres")]
mod scenario {
    use std::net::SocketAddr;

    use sqlx::{AssertSqlSafe, Connection, PgConnection};

    use super::KILL_AFTER;
    use crate::process::{Process, stats, summary};

    /// The key of the sending service, which both senders sign with. The
    /// receiver scopes idempotency keys by the signing key id. A message
    /// that one instance sent and another sends again after a crash is
    /// recognised as a retry only under the same key id.
    const KEY_FILE: &str = "orders YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=\n";

    /// Commands per sender: 5,000 in all.
    const PER_SENDER: u64 = 2_500;

    /// Runs two receivers and two senders on a fresh database. With
    /// `kill_one`, the first sender is killed after it stored its
    /// commands, and the second one's dispatcher delivers them too.
    pub(super) async fn two_of_each(server_url: String, kill_one: bool) {
        let database = Database::create(&server_url).await;
        let directory = tempfile::tempdir().expect("a temporary directory");
        let keys = directory.path().join("keys.txt");
        std::fs::write(&keys, KEY_FILE).expect("the key file is written");
        let keys = keys.display().to_string();

        let (first_receiver, first) = receiver(&keys, &database.url);
        let (second_receiver, second) = receiver(&keys, &database.url);
        let mut first_sender = sender(&keys, &database.url, first, PER_SENDER);
        let mut second_sender = sender(&keys, &database.url, second, PER_SENDER);
        first_sender.wait_for_line("enqueued ");
        second_sender.wait_for_line("enqueued ");

        if kill_one {
            tokio::time::sleep(KILL_AFTER).await;
            first_sender.kill();
        } else {
            first_sender.finish();
        }
        second_sender.finish();

        // A last run on the same outbox reports what the two left.
        let last = summary(&sender(&keys, &database.url, first, 0).finish());
        assert_eq!(last["delivered"], 2 * PER_SENDER, "{last}");
        assert_eq!(last["dead"], 0, "{last}");
        assert_eq!(last["pending"], 0, "{last}");

        let (runs, handled, distinct) = stats(second);
        assert_eq!(handled, 2 * PER_SENDER, "every command is applied");
        assert_eq!(distinct, 2 * PER_SENDER, "no command is applied twice");
        if !kill_one {
            assert_eq!(runs, handled, "no command reached a handler twice");
        }

        first_receiver.kill();
        second_receiver.kill();
        database.drop().await;
    }

    fn receiver(keys: &str, url: &str) -> (Process, SocketAddr) {
        let args = ["--listen", "127.0.0.1:0", "--keys", keys, "--store", url];
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        let mut process = Process::start("receiver", &args);
        let line = process.wait_for_line("listening on ");
        let address = line["listening on ".len()..]
            .parse()
            .expect("the receiver prints its address");
        (process, address)
    }

    fn sender(keys: &str, url: &str, target: SocketAddr, count: u64) -> Process {
        let target = format!("http://{target}");
        let count = count.to_string();
        let args = [
            "--target", &target, "--keys", keys, "--store", url, "--count", &count, "--drain",
        ];
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        Process::start("sender", &args)
    }

    /// A database of its own on the test server, so that no other test's
    /// messages share the queues.
    struct Database {
        server_url: String,
        name: String,
        url: String,
    }

    impl Database {
        async fn create(server_url: &str) -> Self {
            let name = crate::support::unique_name("courier_instances_");
            let mut connection = PgConnection::connect(server_url)
                .await
                .expect("the test server accepts connections");
            // The name is ours: a prefix and hex digits.
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut connection)
                .await
                .expect("the test database is created");

            let (base, query) = match server_url.split_once('?') {
                Some((base, query)) => (base, format!("?{query}")),
                None => (server_url, String::new()),
            };
            let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
            let url = format!("{server}/{name}{query}");
            Self {
                server_url: server_url.to_owned(),
                name,
                url,
            }
        }

        async fn drop(self) {
            let mut connection = PgConnection::connect(&self.server_url)
                .await
                .expect("the test server accepts connections");
            let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut connection)
                .await
                .expect("the test database is dropped");
        }
    }
}
