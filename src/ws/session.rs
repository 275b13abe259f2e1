//! One WebSocket connection: a reader that handles frames and a writer that sends queued
//! frames and heartbeats. Written over any stream and sink so it can run on channels.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use tokio::time::{interval, timeout, MissedTickBehavior};

use super::frames::{self, ClientFrame, ConversationRef, EndedOut, SendMessage};
use super::frames::{ResumeRequest, StartConversation};
use crate::auth::AuthUser;
use crate::chat::events::{new_generation_id, GenerationId, LiveEvent};
use crate::chat::hub::{Delivery, GenerationOwner, Member};
use crate::db::Scope;
use crate::ids::IdCodec;
use crate::service::chat::{self, TurnRequest};
use crate::service::conversations::{self, CreateConversation};
use crate::service::ServiceError;
use crate::state::AppState;

/// Close code for a server going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a normal close (idle timeout).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a policy violation (a client too slow to keep up).
pub const CLOSE_POLICY: u16 = 1008;
/// Answers queued for one connection.
const OUTBOX_CAPACITY: usize = 256;

/// The replies this connection asked for or resumed: their end is its `send_message`
/// answer, where other connections get a broadcast.
type Mine = Arc<Mutex<HashSet<GenerationId>>>;

/// Where a connection's own answers (serialized frames) are queued.
type Outbox = mpsc::Sender<String>;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The authenticated user; `None` for anonymous connections.
    pub user: Option<AuthUser>,
    /// The conversation the connection is bound to (`/ws/{conversation_id}`).
    pub bound: Option<i64>,
}

/// Runs a connection until the client leaves, goes idle, or the service shuts down.
pub async fn run<In, Out>(state: AppState, peer: Peer, incoming: In, outgoing: Out)
where
    In: Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    Out: Sink<Message> + Unpin + Send + 'static,
{
    let _open = crate::metrics::ws_connection_opened();
    let (member, live) = state.hub.connect();
    let (outbox, queue) = mpsc::channel(OUTBOX_CAPACITY);
    let (close_tx, close_rx) = oneshot::channel();
    let mine = Mine::default();
    if let Some(conversation) = peer.bound {
        state.hub.join(conversation, &member).await;
    }
    let writer = tokio::spawn(write_loop(
        outgoing,
        Queues {
            answers: queue,
            live,
            ids: state.ids.clone(),
            mine: mine.clone(),
            lagged: member.lagged().clone(),
        },
        close_rx,
        state.settings.limits.ws_ping_interval,
        state.settings.limits.ws_send_timeout,
    ));
    let mut session = Session {
        state: state.clone(),
        member,
        peer,
        started: HashSet::new(),
        outbox,
        mine,
    };
    let close = session.read_loop(incoming).await;
    state.hub.disconnect(session.member.id);
    let _ = close_tx.send(close);
    let _ = writer.await;
}

/// What the writer sends: the connection's own answers and the events of the conversations
/// it follows, rendered here.
struct Queues {
    answers: mpsc::Receiver<String>,
    live: mpsc::Receiver<Delivery>,
    ids: Arc<IdCodec>,
    mine: Mine,
    /// Cancelled when the connection fell too far behind its events.
    lagged: tokio_util::sync::CancellationToken,
}

impl Queues {
    /// The frames of a delivery, in order.
    fn render(&self, delivery: Delivery) -> Vec<String> {
        let events = match delivery {
            Delivery::Event(event) => vec![event],
            Delivery::Replay(events) => {
                // A replay goes only to the connection that resumed: the reply is its own.
                if let Some(generation) = events.first().and_then(LiveEvent::generation) {
                    self.mine_set().insert(generation.clone());
                }
                events
            }
        };
        events
            .iter()
            .filter_map(|event| {
                let mine = event
                    .generation()
                    .is_some_and(|g| self.mine_set().contains(g));
                if mine && event.ends_reply() {
                    if let Some(generation) = event.generation() {
                        self.mine_set().remove(generation);
                    }
                }
                frames::live(&self.ids, event, mine)
            })
            .collect()
    }

    fn mine_set(&self) -> std::sync::MutexGuard<'_, HashSet<GenerationId>> {
        self.mine.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why the writer stopped.
enum Stop {
    /// The socket failed or the client is gone.
    Gone,
    /// A frame could not be written within the send timeout.
    TooSlow,
}

/// Sends queued frames and pings until told to close, the socket fails, or the client does
/// not take a frame within `send_timeout` (then it is closed with 1008, and may resume).
async fn write_loop<Out>(
    mut sink: Out,
    mut queues: Queues,
    close: oneshot::Receiver<Option<CloseFrame>>,
    ping_every: Duration,
    send_timeout: Duration,
) where
    Out: Sink<Message> + Unpin,
{
    let mut ticker = interval(ping_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    tokio::pin!(close);
    async fn send<Out: Sink<Message> + Unpin>(
        sink: &mut Out,
        message: Message,
        within: Duration,
    ) -> Result<(), Stop> {
        match timeout(within, sink.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => Err(Stop::TooSlow),
        }
    }
    let stopped: Result<(), Stop> = async {
        loop {
            tokio::select! {
                frame = queues.answers.recv() => match frame {
                    Some(text) => send(&mut sink, Message::Text(text.into()), send_timeout).await?,
                    None => return Ok(()),
                },
                Some(delivery) = queues.live.recv() => {
                    for text in queues.render(delivery) {
                        send(&mut sink, Message::Text(text.into()), send_timeout).await?;
                    }
                }
                () = queues.lagged.cancelled() => return Err(Stop::TooSlow),
                _ = ticker.tick() => send(&mut sink, Message::Ping(Default::default()), send_timeout).await?,
                frame = &mut close => {
                    // Frames already queued (a reply's last answer) go out before the close.
                    while let Ok(text) = queues.answers.try_recv() {
                        send(&mut sink, Message::Text(text.into()), send_timeout).await?;
                    }
                    if let Ok(Some(frame)) = frame {
                        send(&mut sink, Message::Close(Some(frame)), send_timeout).await?;
                    }
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(Stop::TooSlow) = stopped {
        // The reader stops too; the client may reconnect and resume.
        queues.lagged.cancel();
        let frame = close_frame(CLOSE_POLICY, "too slow");
        let _ = send(&mut sink, Message::Close(Some(frame)), send_timeout).await;
    }
    let _ = timeout(send_timeout, sink.close()).await;
}

struct Session {
    state: AppState,
    member: Member,
    peer: Peer,
    /// Conversations this connection started; all an anonymous connection may touch.
    started: HashSet<i64>,
    outbox: Outbox,
    mine: Mine,
}

impl Session {
    /// Handles frames until the connection ends; returns the close frame to send, if any.
    async fn read_loop<In>(&mut self, mut incoming: In) -> Option<CloseFrame>
    where
        In: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let idle = self.state.settings.limits.ws_idle_timeout;
        let shutdown = self.state.shutdown.clone();
        let lagged = self.member.lagged().clone();
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => {
                    return Some(close_frame(CLOSE_GOING_AWAY, "server shutting down"));
                }
                // The writer closes the socket.
                () = lagged.cancelled() => return None,
                next = timeout(idle, incoming.next()) => next,
            };
            let message = match next {
                Err(_) => return Some(close_frame(CLOSE_NORMAL, "idle timeout")),
                Ok(None) => return None,
                Ok(Some(Err(err))) if is_oversize(&err) => {
                    let reason = format!(
                        "frame larger than {} bytes",
                        self.state.settings.limits.ws_max_frame_bytes
                    );
                    return Some(close_frame(CLOSE_TOO_BIG, &reason));
                }
                Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => self.handle(text.as_str()).await,
                Message::Binary(_) => {
                    self.send(frames::failure("error", "Binary frames are not supported"))
                        .await
                }
                Message::Close(_) => return None,
                // Any traffic, pongs included, proves the client alive.
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    async fn send(&self, frame: String) {
        let _ = self.outbox.send(frame).await;
    }

    async fn handle(&mut self, text: &str) {
        let frame = match frames::parse(text) {
            Ok(frame) => frame,
            Err(err) => return self.send(frames::failure(&err.kind, &err.message)).await,
        };
        let answer: Answer = match frame {
            ClientFrame::Ping => Ok(Some(frames::success(
                "pong",
                json!({ "timestamp": chrono::Utc::now() }),
            ))),
            ClientFrame::Start(data) => self.start(data).await,
            ClientFrame::Send(data) => self.send_message(data).await,
            ClientFrame::Stop(data) => self.stop(data).await,
            ClientFrame::End(data) => self.end(data).await,
            ClientFrame::Resume(data) => self.resume(data).await,
        };
        if let Some(frame) =
            answer.unwrap_or_else(|(kind, message)| Some(frames::failure(kind, &message)))
        {
            self.send(frame).await;
        }
    }

    fn scope(&self) -> Scope {
        match &self.peer.user {
            Some(user) => user.write_scope(),
            None => Scope::Anonymous,
        }
    }

    /// The conversation a frame names (or the bound one), if this connection may touch it.
    fn conversation(&self, kind: &'static str, raw: Option<&str>) -> Result<i64, Failure> {
        let key = match (raw, self.peer.bound) {
            (Some(raw), _) => self.state.ids.conversation.decode(raw),
            (None, Some(bound)) => Some(bound),
            (None, None) => return Err((kind, "Missing field: conversation_id".to_owned())),
        };
        let allowed = key.filter(|key| {
            self.peer.bound.is_none_or(|bound| bound == *key)
                && (self.peer.user.is_some() || self.started.contains(key))
        });
        allowed.ok_or_else(|| (kind, ServiceError::NotFound("Conversation").to_string()))
    }

    async fn start(&mut self, data: StartConversation) -> Answer {
        const KIND: &str = "start_conversation";
        let input = CreateConversation {
            title: data.title,
            system_message: data.system_message,
            model: data.model,
            context_metadata: None,
        };
        let owner = self.peer.user.as_ref().map(|u| u.user.id);
        let conversation = conversations::create(&self.state, owner, input)
            .await
            .map_err(|e| failure(KIND, e))?;
        self.started.insert(conversation.id);
        self.state.hub.join(conversation.id, &self.member).await;
        let public_id = self.state.ids.conversation.encode(conversation.id);
        // Older clients read the new conversation's ID at the top level of the answer.
        let answer = json!({
            "type": KIND,
            "success": true,
            "conversation_id": public_id,
            "data": {
                "conversation_id": public_id,
                "title": conversation.title,
                "status": conversation.status,
                "model": conversation.model,
                "created_at": conversation.created_at,
            },
        });
        Ok(Some(answer.to_string()))
    }

    async fn send_message(&mut self, data: SendMessage) -> Answer {
        const KIND: &str = "send_message";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        let owner = match &self.peer.user {
            Some(user) => GenerationOwner::User(user.user.id),
            None => GenerationOwner::Anonymous,
        };
        let generation = new_generation_id();
        let request = TurnRequest {
            scope: self.scope(),
            conversation: key,
            content: data.content,
            owner,
            generation: generation.clone(),
            user_token: self.peer.user.as_ref().map(|u| u.token.clone()),
        };
        // Claim the reply before it starts, so its end is rendered as this frame's answer;
        // the turn makes this connection follow the conversation once it is known to be the
        // caller's.
        self.mine_set().insert(generation.clone());
        if let Err(err) = chat::start(&self.state, request, &self.member).await {
            self.mine_set().remove(&generation);
            return Err(failure(KIND, err));
        }
        // The answer comes from the reply's events.
        Ok(None)
    }

    async fn stop(&mut self, data: ConversationRef) -> Answer {
        const KIND: &str = "stop_generation";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        // The scope check in the query keeps one user from stopping another's reply.
        conversations::load(&self.state, self.scope(), key)
            .await
            .map_err(|e| failure(KIND, e))?;
        let stopped = self.state.hub.stop_generation(key).await;
        Ok(Some(frames::success(
            KIND,
            json!({
                "conversation_id": self.state.ids.conversation.encode(key),
                "stopped": stopped,
            }),
        )))
    }

    async fn end(&mut self, data: ConversationRef) -> Answer {
        const KIND: &str = "end_conversation";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        let conversation = conversations::end(&self.state, self.scope(), key, Some(self.member.id))
            .await
            .map_err(|e| failure(KIND, e))?;
        let data = EndedOut {
            conversation_id: self.state.ids.conversation.encode(key),
            status: conversation.status,
            ended_at: conversation.ended_at,
        };
        Ok(Some(frames::success_with(KIND, &data)))
    }

    async fn resume(&mut self, data: ResumeRequest) -> Answer {
        const KIND: &str = "resume";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        conversations::load(&self.state, self.scope(), key)
            .await
            .map_err(|e| failure(KIND, e))?;
        let resumed = self
            .state
            .hub
            .resume(key, &self.member, data.after_seq)
            .await;
        // When there is a reply, its replay (start, missed chunks, end) is the answer.
        match resumed {
            Some(_) => Ok(None),
            None => Ok(Some(frames::success(
                KIND,
                json!({
                    "conversation_id": self.state.ids.conversation.encode(key),
                    "generating": false,
                }),
            ))),
        }
    }

    fn mine_set(&self) -> std::sync::MutexGuard<'_, HashSet<GenerationId>> {
        self.mine.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A failed frame: its type and a safe message.
type Failure = (&'static str, String);
/// The answer to a frame: a frame to send (or none, when it comes later) or a failure.
type Answer = Result<Option<String>, Failure>;

/// A failure answer; storage errors are logged and answered generically.
fn failure(kind: &'static str, err: ServiceError) -> Failure {
    match err {
        ServiceError::Store(err) => {
            tracing::error!(error = ?err, "chat frame failed");
            (kind, "Internal error".to_owned())
        }
        other => (kind, other.to_string()),
    }
}

/// Whether a read failed on a frame or message over the size limit.
fn is_oversize(err: &axum::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|err| matches!(err, tungstenite::Error::Capacity(_)))
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
