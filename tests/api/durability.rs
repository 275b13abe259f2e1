//! Nothing acknowledged is lost on a crash: the service binary runs as a child process,
//! writers post messages to it, it is killed with SIGKILL under that load, and a new process
//! on the same database must hold every message that was answered 201.
//!
//! A killed process leaves what it wrote in the operating system's cache, so this catches a
//! write answered before its transaction committed, not a commit that skipped its flush to
//! disk (only a power loss would show that).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::helpers::{now, sign, AUTH_SECRET_KEY, PATIENCE};
use crate::test_database::TestDatabase;

/// Concurrent writers.
const WRITERS: usize = 16;
/// Messages answered 201 before the process is killed.
const ACKNOWLEDGED_BEFORE_KILL: usize = 300;

/// The service binary running as a child process.
struct Service {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    address: String,
}

impl Service {
    /// Starts the binary on `database_url` on a free port, in `folder` (so no `.env` file of
    /// the checkout applies), and waits until it listens.
    async fn start(database_url: &str, folder: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-service"))
            .env_clear()
            .current_dir(folder)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("DATABASE_URL", database_url)
            .env("AUTH_SECRET_KEY", AUTH_SECRET_KEY)
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the service binary starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let address = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.expect("the log reads") {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if event["message"] == "listening" {
                    let address = event["address"].as_str().expect("the address logged");
                    return format!("http://{address}");
                }
            }
            panic!("the service exited before listening");
        })
        .await
        .expect("the service listens");
        // The log is read to its end so that the service never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, address }
    }

    /// Kills the process with SIGKILL: no shutdown, no flush, no chance to finish anything.
    async fn kill(mut self) {
        self.child.kill().await.expect("the service is killed");
    }
}

/// A token for `sub` signed with the secret the child verifies with.
fn token(sub: &str) -> String {
    sign(&json!({ "sub": sub, "roles": ["user"], "exp": now() + 3600 }))
}

/// Writers post messages until the service dies, which it does by SIGKILL once enough have
/// been answered; returns the acknowledged messages, content to public ID. Each writer stops
/// at its first request that fails: the one under way when the process died.
async fn post_until_killed(
    service: Service,
    conversation: &str,
    token: &str,
) -> BTreeMap<String, String> {
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("HTTP client");
    let url = format!(
        "{}/api/v1/conversations/{conversation}/messages",
        service.address
    );
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
        let (acknowledged, count, enough) = (acknowledged.clone(), count.clone(), enough.clone());
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let content = format!("writer {writer} message {n}");
                let body = json!({ "role": "user", "content": content });
                let sent = client.post(&url).bearer_auth(&token).json(&body).send();
                let Ok(response) = sent.await else {
                    return;
                };
                assert_eq!(response.status(), 201, "a write failed before the kill");
                let Ok(message) = response.json::<Value>().await else {
                    return;
                };
                let id = message["id"].as_str().expect("a message id").to_owned();
                acknowledged.lock().unwrap().insert(content, id);
                if count.fetch_add(1, Ordering::SeqCst) + 1 == ACKNOWLEDGED_BEFORE_KILL {
                    enough.notify_one();
                }
            }
        }));
    }
    tokio::time::timeout(PATIENCE, enough.notified())
        .await
        .expect("the writers got answers");
    service.kill().await;
    for writer in writers {
        tokio::time::timeout(PATIENCE, writer)
            .await
            .expect("the writers notice the kill")
            .expect("a writer");
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    acknowledged
}

/// Every message of a conversation, content to public ID.
async fn stored(address: &str, conversation: &str, token: &str) -> BTreeMap<String, String> {
    let client = reqwest::Client::new();
    let mut all = BTreeMap::new();
    for page in 0.. {
        let url = format!(
            "{address}/api/v1/conversations/{conversation}/messages?limit=1000&skip={}",
            page * 1000
        );
        let response = client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let messages: Vec<Value> = response.json().await.unwrap();
        if messages.is_empty() {
            return all;
        }
        for message in messages {
            all.insert(
                message["content"].as_str().unwrap().to_owned(),
                message["id"].as_str().unwrap().to_owned(),
            );
        }
    }
    unreachable!()
}

async fn acknowledged_messages_survive_a_kill(database: TestDatabase) {
    let folder = tempfile::tempdir().expect("a working folder");
    let service = Service::start(database.url(), folder.path()).await;
    let token = token("writer");
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/users/me/conversations", service.address))
        .bearer_auth(&token)
        .json(&json!({ "title": "under load" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let conversation = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let acknowledged = post_until_killed(service, &conversation, &token).await;
    assert!(acknowledged.len() >= ACKNOWLEDGED_BEFORE_KILL);

    let service = Service::start(database.url(), folder.path()).await;
    let stored = stored(&service.address, &conversation, &token).await;
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(content, id)| stored.get(*content) != Some(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost or changed, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        lost.first()
    );
    service.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_kill_on_sqlite() {
    acknowledged_messages_survive_a_kill(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_kill_on_postgres() {
    if let Some(database) = TestDatabase::postgres().await {
        acknowledged_messages_survive_a_kill(database).await;
    }
}
