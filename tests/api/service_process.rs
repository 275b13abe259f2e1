//! The service binary run as a child process, for what only a real process shows: its memory,
//! what survives a kill, and what it does before it exits on SIGTERM.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::fake_llm::{Behaviour, FakeLlm};
use crate::helpers::{now, sign, AUTH_SECRET_KEY, PATIENCE};
use crate::ws_client::WsClient;

/// A running service binary; killed when dropped.
pub struct ServiceProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// Its JSON log lines so far.
    log: Arc<watch::Sender<Vec<Value>>>,
}

impl ServiceProcess {
    /// Starts the binary on a free port with these settings (and the suite's secret), and
    /// waits until it listens.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-service"));
        command
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .env("AUTH_SECRET_KEY", AUTH_SECRET_KEY)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the service binary starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let address = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.expect("log lines") {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["message"] == "listening" {
                    return entry["address"].as_str().map(str::to_owned);
                }
            }
            None
        })
        .await
        .expect("the service listens in time")
        .expect("the service logs its address");
        // Keep reading the log so the child never blocks on a full pipe.
        let log = Arc::new(watch::channel(Vec::new()).0);
        let kept = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                    kept.send_modify(|entries| entries.push(entry));
                }
            }
        });
        Self {
            child,
            address: format!("http://{address}"),
            log,
        }
    }

    /// Waits until the log lines (JSON objects) logged since the service listened satisfy
    /// `done`, and returns them.
    pub async fn wait_for_log(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut log = self.log.subscribe();
        let found = tokio::time::timeout(PATIENCE, log.wait_for(|entries| done(entries))).await;
        match found {
            Ok(Ok(entries)) => entries.clone(),
            _ => panic!("never logged: {what}: {:#?}", self.log.borrow()),
        }
    }

    /// Opens a WebSocket on `path` (with its query).
    pub async fn connect(&self, path: &str) -> WsClient {
        WsClient::open(&self.address, path).await
    }

    /// Sends SIGTERM, as an orchestrator stopping the service does, and waits until the
    /// process has exited.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("a running child");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM reaches the service");
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the service exits in time")
            .expect("its exit status")
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("a running child");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("the field")
    }

    /// CPU time the process has used so far (user and system), in clock ticks of
    /// `/proc/<pid>/stat` (100 a second on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let pid = self.child.id().expect("a running child");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // The command name may hold spaces; the fields are counted after its parenthesis.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("a name") + 2..]
            .split(' ')
            .collect();
        // utime and stime, fields 14 and 15 of the whole line.
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }
}

/// The binary on a SQLite database of its own, pointed at a fake LLM, with a user and a
/// conversation to chat in over REST: for peak-memory figures of one reply.
pub struct ChatProcess {
    /// The fake LLM the service asks.
    pub llm: FakeLlm,
    /// The service.
    pub service: ServiceProcess,
    client: reqwest::Client,
    token: String,
    /// `POST` URL of the conversation's chat.
    chat: String,
    /// Holds the database; removed when dropped.
    _folder: tempfile::TempDir,
}

impl ChatProcess {
    /// Starts the fake LLM and the service with the LLM's defaults, and a conversation.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// The same, with these settings besides.
    pub async fn start_with(settings: &[(&str, &str)]) -> Self {
        let llm = FakeLlm::start().await;
        let folder = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", folder.path().join("chat.db").display());
        let mut env = vec![
            ("DATABASE_URL", database.as_str()),
            ("LLM_PROVIDER", "openai"),
            ("OPENAI_BASE_URL", &llm.base_url),
            ("OPENAI_API_KEY", "test-key"),
            ("OPENAI_MODEL", "fake-model"),
        ];
        env.extend_from_slice(settings);
        let service = ServiceProcess::start(&env).await;
        let client = reqwest::Client::new();
        let token = sign(&json!({"sub": "max", "roles": ["user"], "exp": now() + 600}));
        let created: Value = client
            .post(format!("{}/api/v1/users/me/conversations", service.address))
            .bearer_auth(&token)
            .json(&json!({"title": "memory"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let chat = format!(
            "{}/api/v1/conversations/{}/chat",
            service.address,
            created["id"].as_str().unwrap()
        );
        Self {
            llm,
            service,
            client,
            token,
            chat,
            _folder: folder,
        }
    }

    /// Posts `body` to `/api/v1{path}` as the conversation's owner.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1{path}", self.service.address))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Sends `content` and waits for the answer.
    pub async fn say(&self, content: &str) -> reqwest::Response {
        self.client
            .post(&self.chat)
            .bearer_auth(&self.token)
            .json(&json!({ "content": content }))
            .send()
            .await
            .unwrap()
    }

    /// Runs a few exchanges of about `LLM_MAX_REPLY_CHARS` (buffers, every worker thread's
    /// allocator pages) and returns the peak memory after them in KiB: the baseline of a
    /// figure.
    pub async fn warm_up(&self) -> u64 {
        for _ in 0..4 {
            self.llm.script(Behaviour::Reply {
                pieces: vec!["w".repeat(16 * 1024); 6],
                delay: Duration::ZERO,
            });
            assert_eq!(self.say("warm up").await.status(), 200);
        }
        self.service.memory_kib("VmHWM")
    }

    /// Growth of the peak memory over `baseline`, in KiB.
    pub fn peak_growth_kib(&self, baseline: u64) -> u64 {
        self.service.memory_kib("VmHWM").saturating_sub(baseline)
    }
}
