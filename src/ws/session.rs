//! One WebSocket connection: a reader that handles frames and a writer that sends queued
//! frames and heartbeats. Written over any stream and sink so it can run on channels.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message};
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use tokio::time::{interval, timeout, MissedTickBehavior};

use super::frames::{self, ClientFrame, ConversationRef, EditRequest, EndedOut, FailureData};
use super::frames::{LimitedOut, NotGenerating, PongOut, RegenerateRequest, ResumeRequest};
use super::frames::{SendMessage, ServerFrame, StartConversation};
use super::frames::{StartedOut, StoppedOut, Success};
use crate::auth::AuthUser;
use crate::chat::events::{GenerationId, LiveEvent, TurnKind};
use crate::chat::hub::{Deliveries, Delivery, GenerationOwner, Member};
use crate::db::Scope;
use crate::ids::IdCodec;
use crate::queue;
use crate::service::chat::{self, Turn, TurnAction, TurnRequest};
use crate::service::conversations::{self, CreateConversation};
use crate::service::usage::{self, Account, Role};
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
/// How long a connection closed for being too slow may take to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Where a connection's own answers are queued for its writer; a sender waits while it is
/// full. Allocates nothing while the connection is idle.
type Outbox = queue::Sender<Outgoing>;

/// What the reader and a reply's forwarding queue for the writer.
enum Outgoing {
    /// A serialized frame.
    Frame(String),
    /// The connection ends: what was queued before goes out, then the close frame, if any.
    End(Option<CloseFrame>),
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The authenticated user; `None` for anonymous connections.
    pub user: Option<AuthUser>,
    /// The conversation the connection is bound to (`/ws/{conversation_id}`).
    pub bound: Option<i64>,
    /// The client's address, as `TRUSTED_PROXIES` allow it to be known (anonymous chat is
    /// rate-limited by it).
    pub address: Option<std::net::IpAddr>,
}

/// Runs a connection until the client leaves, goes idle, or the service shuts down.
///
/// The writer is started and the reader set up before the returned future runs: a future
/// keeps its arguments for its whole life, and an idle connection should not hold a second,
/// moved-from copy of its peer and socket halves.
pub fn run<In, Out>(
    state: AppState,
    peer: Peer,
    incoming: In,
    outgoing: Out,
) -> impl Future<Output = ()> + Send
where
    In: Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    Out: Sink<Message> + Unpin + Send + 'static,
{
    let open = crate::metrics::ws_connection_opened();
    let (member, live) = state.hub.live.connect(true);
    let (outbox, answers) = queue::bounded(OUTBOX_CAPACITY);
    let writer = tokio::spawn(write_loop(
        outgoing,
        Queues {
            answers,
            live,
            ids: state.ids.clone(),
            resumed: HashSet::new(),
            lagged: member.lagged().clone(),
        },
        state.settings.limits.ws_ping_interval,
        state.settings.limits.ws_send_timeout,
    ));
    let mut session = Session {
        state,
        member,
        peer,
        started: HashSet::new(),
        outbox,
    };
    async move {
        let _open = open;
        if let Some(conversation) = session.peer.bound {
            let live = &session.state.hub.live;
            live.join(conversation, &session.member).await;
        }
        let close = session.read_loop(incoming).await;
        session.state.hub.live.disconnect(session.member.id);
        let _ = session.outbox.send(Outgoing::End(close)).await;
        let _ = writer.await;
    }
}

/// What the writer sends: the connection's own answers and the events of the conversations
/// it follows, rendered here.
struct Queues {
    answers: queue::Receiver<Outgoing>,
    live: Deliveries,
    ids: Arc<IdCodec>,
    /// Replies this connection resumed: their end is its `send_message` answer, where other
    /// connections get a broadcast.
    resumed: HashSet<GenerationId>,
    /// Cancelled when the connection fell too far behind its events.
    lagged: CancellationToken,
}

impl Queues {
    /// The frames of a delivery, in order.
    fn render(&mut self, delivery: Delivery) -> Vec<String> {
        match delivery {
            Delivery::Event(event) => self.render_event(&event).into_iter().collect(),
            Delivery::Replay(events) => {
                // A replay goes only to the connection that resumed: the reply is its own.
                if let Some(generation) = events.first().and_then(LiveEvent::generation) {
                    self.resumed.insert(generation.clone());
                }
                events.iter().filter_map(|e| self.render_event(e)).collect()
            }
        }
    }

    fn render_event(&mut self, event: &LiveEvent) -> Option<String> {
        let generation = event.generation();
        let mine = generation.is_some_and(|g| self.resumed.contains(g));
        if mine && event.ends_reply() {
            generation.map(|g| self.resumed.remove(g));
        }
        frames::live(&self.ids, event, mine.then_some(TurnKind::Send))
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
    ping_every: Duration,
    send_timeout: Duration,
) where
    Out: Sink<Message> + Unpin,
{
    let mut ticker = interval(ping_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let lagged = queues.lagged.clone();
    // A send gives up after the timeout, or at once when the connection falls behind.
    async fn send<Out: Sink<Message> + Unpin>(
        sink: &mut Out,
        message: Message,
        within: Duration,
        lagged: &CancellationToken,
    ) -> Result<(), Stop> {
        // Boxed: a send's timer and wait are not kept in every idle connection's writer.
        Box::pin(async {
            tokio::select! {
                biased;
                () = lagged.cancelled() => Err(Stop::TooSlow),
                sent = timeout(within, sink.send(message)) => match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(Stop::Gone),
                    Err(_) => Err(Stop::TooSlow),
                },
            }
        })
        .await
    }
    let stopped: Result<(), Stop> = async {
        loop {
            tokio::select! {
                next = queues.answers.recv() => match next {
                    Some(Outgoing::Frame(text)) => send(&mut sink, Message::Text(text.into()), send_timeout, &lagged).await?,
                    // Frames queued before the end (a reply's last answer) went out first.
                    Some(Outgoing::End(frame)) => {
                        if let Some(frame) = frame {
                            send(&mut sink, Message::Close(Some(frame)), send_timeout, &lagged).await?;
                        }
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                Some(delivery) = queues.live.recv() => {
                    for text in queues.render(delivery) {
                        send(&mut sink, Message::Text(text.into()), send_timeout, &lagged).await?;
                    }
                }
                () = lagged.cancelled() => return Err(Stop::TooSlow),
                _ = ticker.tick() => send(&mut sink, Message::Ping(Default::default()), send_timeout, &lagged).await?,
            }
        }
    }
    .await;
    if let Err(Stop::TooSlow) = stopped {
        // The reader stops too; the client may reconnect and resume. A client that takes no
        // frames gets one second for the close frame and the close together, not a full
        // send timeout for each.
        lagged.cancel();
        let frame = close_frame(CLOSE_POLICY, "too slow");
        // Boxed, as the close: it happens once.
        let _ = Box::pin(timeout(CLOSE_GRACE, async {
            if sink.send(Message::Close(Some(frame))).await.is_ok() {
                let _ = sink.close().await;
            }
        }))
        .await;
        return;
    }
    let _ = Box::pin(timeout(send_timeout, sink.close())).await;
}

struct Session {
    state: AppState,
    member: Member,
    peer: Peer,
    /// Conversations this connection started; all an anonymous connection may touch.
    started: HashSet<i64>,
    outbox: Outbox,
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
                // Boxed: handling a frame takes far more state than waiting for one, and an idle
                // connection should hold only the latter.
                Message::Text(text) => Box::pin(self.handle(text.as_str())).await,
                Message::Binary(_) => {
                    let refusal = Refusal::new("error", "Binary frames are not supported");
                    self.send(refusal.render(&self.state.ids)).await
                }
                Message::Close(_) => return None,
                // Any traffic, pongs included, proves the client alive.
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    async fn send(&self, frame: String) {
        let _ = self.outbox.send(Outgoing::Frame(frame)).await;
    }

    async fn handle(&mut self, text: &str) {
        let frame = match frames::parse(text) {
            Ok(frame) => frame,
            Err(err) => {
                let refusal = Refusal::new(&err.kind, &err.message);
                return self.send(refusal.render(&self.state.ids)).await;
            }
        };
        let answer: Answer = match frame {
            ClientFrame::Ping => Ok(Some(
                ServerFrame::Pong {
                    success: Success,
                    data: PongOut {
                        timestamp: chrono::Utc::now(),
                    },
                }
                .render(),
            )),
            ClientFrame::Start(data) => self.start(data).await,
            ClientFrame::Send(data) => self.send_message(data).await,
            ClientFrame::Regenerate(data) => self.regenerate(data).await,
            ClientFrame::Edit(data) => self.edit(data).await,
            ClientFrame::Stop(data) => self.stop(data).await,
            ClientFrame::End(data) => self.end(data).await,
            ClientFrame::Resume(data) => self.resume(data).await,
        };
        let frame = answer.unwrap_or_else(|refusal| Some(refusal.render(&self.state.ids)));
        if let Some(frame) = frame {
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
    fn conversation(&self, kind: &'static str, raw: Option<&str>) -> Result<i64, Refusal> {
        let key = match (raw, self.peer.bound) {
            (Some(raw), _) => self.state.ids.conversation.decode(raw),
            (None, Some(bound)) => Some(bound),
            (None, None) => return Err(Refusal::new(kind, "Missing field: conversation_id")),
        };
        let allowed = key.filter(|key| {
            self.peer.bound.is_none_or(|bound| bound == *key)
                && (self.peer.user.is_some() || self.started.contains(key))
        });
        // A conversation that is not this connection's is named as the client named it.
        allowed.ok_or_else(|| {
            let refusal = Refusal::service(kind, ServiceError::NotFound("Conversation"));
            refusal.naming_raw(raw)
        })
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
            .map_err(|e| Refusal::service(KIND, e))?;
        self.started.insert(conversation.id);
        self.state
            .hub
            .live
            .join(conversation.id, &self.member)
            .await;
        let public_id = self.state.ids.conversation.encode(conversation.id);
        let frame = ServerFrame::StartConversation {
            success: Success,
            conversation_id: public_id.clone(),
            data: StartedOut {
                conversation_id: public_id,
                title: conversation.title,
                status: conversation.status,
                model: conversation.model,
                created_at: conversation.created_at,
            },
        };
        Ok(Some(frame.render()))
    }

    async fn send_message(&mut self, data: SendMessage) -> Answer {
        const KIND: &str = "send_message";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        self.turn(KIND, key, TurnAction::Send, data.content).await
    }

    async fn regenerate(&mut self, data: RegenerateRequest) -> Answer {
        const KIND: &str = "regenerate";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        let message = match data.message_id.as_deref() {
            Some(raw) => Some(self.message(KIND, key, raw)?),
            None => None,
        };
        let action = TurnAction::Regenerate(message);
        self.turn(KIND, key, action, String::new()).await
    }

    async fn edit(&mut self, data: EditRequest) -> Answer {
        const KIND: &str = "edit_message";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        let message = self.message(KIND, key, &data.message_id)?;
        self.turn(KIND, key, TurnAction::Edit(message), data.content)
            .await
    }

    /// The key of a message a frame names; a message that is not one is not found.
    fn message(&self, kind: &'static str, conversation: i64, raw: &str) -> Result<i64, Refusal> {
        self.state.ids.message.decode(raw).ok_or_else(|| {
            Refusal::service(kind, ServiceError::NotFound("Message")).about(conversation)
        })
    }

    /// Starts a turn on a conversation of this connection's; its answer is the reply's end,
    /// of the request's `kind`.
    async fn turn(
        &mut self,
        kind: &'static str,
        key: i64,
        action: TurnAction,
        content: String,
    ) -> Answer {
        let (owner, account) = match &self.peer.user {
            Some(user) => (
                GenerationOwner::User(user.user.id),
                Account::User {
                    id: user.user.id,
                    role: Role::of(&user.roles),
                },
            ),
            None => (
                GenerationOwner::Anonymous,
                Account::Anonymous {
                    address: self.peer.address,
                },
            ),
        };
        let request = TurnRequest {
            scope: self.scope(),
            conversation: key,
            action,
            content,
            owner,
            account,
            user_token: self.peer.user.as_ref().map(|u| u.token.clone()),
        };
        // The turn makes this connection follow the conversation once it is known to be the
        // caller's; the reply itself comes back on the turn's own stream.
        let turn = chat::start(&self.state, request, Some(&self.member))
            .await
            .map_err(|e| Refusal::service(kind, e).about(key))?;
        tokio::spawn(forward(
            turn,
            action.kind(),
            self.outbox.clone(),
            self.state.ids.clone(),
            self.member.lagged().clone(),
        ));
        // The answer is the reply's end.
        Ok(None)
    }

    async fn stop(&mut self, data: ConversationRef) -> Answer {
        const KIND: &str = "stop_generation";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        // The scope check in the query keeps one user from stopping another's reply.
        conversations::load(&self.state, self.scope(), key)
            .await
            .map_err(|e| Refusal::service(KIND, e).about(key))?;
        let stopped = self.state.hub.generations.stop(key).await;
        let frame = ServerFrame::StopGeneration {
            success: Success,
            data: StoppedOut {
                conversation_id: self.state.ids.conversation.encode(key),
                stopped,
            },
        };
        Ok(Some(frame.render()))
    }

    async fn end(&mut self, data: ConversationRef) -> Answer {
        const KIND: &str = "end_conversation";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        let conversation = conversations::end(&self.state, self.scope(), key, Some(self.member.id))
            .await
            .map_err(|e| Refusal::service(KIND, e).about(key))?;
        let frame = ServerFrame::EndConversation {
            success: Success,
            data: EndedOut {
                conversation_id: self.state.ids.conversation.encode(key),
                status: conversation.status,
                ended_at: conversation.ended_at,
            },
        };
        Ok(Some(frame.render()))
    }

    async fn resume(&mut self, data: ResumeRequest) -> Answer {
        const KIND: &str = "resume";
        let key = self.conversation(KIND, data.conversation_id.as_deref())?;
        conversations::load(&self.state, self.scope(), key)
            .await
            .map_err(|e| Refusal::service(KIND, e).about(key))?;
        let resumed = self
            .state
            .hub
            .live
            .resume(key, &self.member, data.after_seq)
            .await;
        // When there is a reply, its replay (start, missed chunks, end) is the answer.
        match resumed {
            Some(_) => Ok(None),
            None => Ok(Some(
                ServerFrame::Resume {
                    success: Success,
                    data: NotGenerating {
                        conversation_id: self.state.ids.conversation.encode(key),
                        generating: false,
                    },
                }
                .render(),
            )),
        }
    }
}

/// Sends a turn's own events to its connection until the reply ends or the connection
/// closes. A connection that fell too far behind is closed (it may resume).
async fn forward(
    mut turn: Turn,
    kind: TurnKind,
    outbox: Outbox,
    ids: Arc<IdCodec>,
    lagged: CancellationToken,
) {
    while let Some(event) = turn.events.next().await {
        let Ok(event) = event else {
            lagged.cancel();
            return;
        };
        let Some(frame) = frames::live(&ids, &event, Some(kind)) else {
            continue;
        };
        if outbox.send(Outgoing::Frame(frame)).await.is_err() {
            return;
        }
    }
}

/// A refused frame: its type, a safe message, and what it was about.
struct Refusal {
    kind: String,
    message: String,
    /// The usage limit that refused a turn, if that is why.
    limit: Option<usage::Refusal>,
    conversation: Option<i64>,
    /// The conversation as the client named it, when it is not one of this connection's.
    named: Option<String>,
}

impl Refusal {
    fn new(kind: &str, message: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.to_owned(),
            limit: None,
            conversation: None,
            named: None,
        }
    }

    /// A failed use case; storage errors are logged and answered generically.
    fn service(kind: &str, err: ServiceError) -> Self {
        match err {
            ServiceError::Store(err) => {
                tracing::error!(error = ?err, "chat frame failed");
                Self::new(kind, "Internal error")
            }
            ServiceError::Limited(limit) => Self {
                limit: Some(limit),
                ..Self::new(kind, &limit.detail())
            },
            other => Self::new(kind, &other.to_string()),
        }
    }

    /// The refusal is about this conversation.
    fn about(mut self, conversation: i64) -> Self {
        self.conversation = Some(conversation);
        self
    }

    /// The refusal is about a conversation the client named but may not touch.
    fn naming_raw(mut self, raw: Option<&str>) -> Self {
        // Only what could be an ID is echoed back.
        self.named = raw.filter(|raw| raw.len() <= 64).map(str::to_owned);
        self
    }

    fn render(self, ids: &IdCodec) -> String {
        let conversation_id = match self.conversation {
            Some(key) => Some(ids.conversation.encode(key)),
            None => self.named,
        };
        let data = FailureData {
            conversation_id,
            ..FailureData::default()
        };
        if let Some(limit) = self.limit {
            return ServerFrame::Limited(LimitedOut {
                kind: &self.kind,
                success: false,
                error: &self.message,
                detail: &self.message,
                limit: limit.limit.as_str(),
                retry_after: limit.retry_after_secs(),
                data,
            })
            .render();
        }
        frames::failure(&self.kind, &self.message, data)
    }
}

/// The answer to a frame: a frame to send (or none, when it comes later) or a refusal.
type Answer = Result<Option<String>, Refusal>;

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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A client that takes no frames: the socket is never ready.
    struct Stuck;

    impl Sink<Message> for Stuck {
        type Error = axum::Error;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }

        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
    }

    /// Runs the writer over a stuck socket with one answer queued; `lag_after` cancels the
    /// lag token that long after the start. Returns how long (paused clock) it took to end.
    async fn writer_on_stuck_socket(
        send_timeout: Duration,
        lag_after: Option<Duration>,
    ) -> Duration {
        let (answers_tx, answers) = queue::bounded(8);
        let (_live_tx, live) = queue::bounded(8);
        let lagged = CancellationToken::new();
        let queues = Queues {
            answers,
            live,
            ids: Arc::new(IdCodec::new("salt")),
            resumed: HashSet::new(),
            lagged: lagged.clone(),
        };
        let frame = Outgoing::Frame("a frame".to_owned());
        answers_tx.send(frame).await.unwrap();
        if let Some(after) = lag_after {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                lagged.cancel();
            });
        }
        let started = tokio::time::Instant::now();
        let ping_every = Duration::from_secs(3600);
        write_loop(Stuck, queues, ping_every, send_timeout).await;
        started.elapsed()
    }

    #[tokio::test]
    async fn the_end_goes_out_after_the_answers_queued_before_it() {
        let (answers_tx, answers) = queue::bounded(8);
        let (_live_tx, live) = queue::bounded(8);
        let queues = Queues {
            answers,
            live,
            ids: Arc::new(IdCodec::new("salt")),
            resumed: HashSet::new(),
            lagged: CancellationToken::new(),
        };
        let going_away = close_frame(CLOSE_GOING_AWAY, "server shutting down");
        for outgoing in [
            Outgoing::Frame("first".to_owned()),
            Outgoing::Frame("second".to_owned()),
            Outgoing::End(Some(going_away.clone())),
            Outgoing::Frame("after the end".to_owned()),
        ] {
            answers_tx.send(outgoing).await.unwrap();
        }
        let (sink, sent) = futures::channel::mpsc::unbounded();
        let ping_every = Duration::from_secs(3600);
        write_loop(sink, queues, ping_every, Duration::from_secs(10)).await;
        let sent: Vec<Message> = sent.collect().await;
        let expected = vec![
            Message::Text("first".into()),
            Message::Text("second".into()),
            Message::Close(Some(going_away)),
        ];
        assert_eq!(sent, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_no_frames_is_let_go_a_second_after_the_send_timeout() {
        let send_timeout = Duration::from_secs(10);
        let took = writer_on_stuck_socket(send_timeout, None).await;
        assert!(took >= send_timeout, "{took:?}");
        assert!(took <= send_timeout + CLOSE_GRACE, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_falls_behind_is_let_go_a_second_after() {
        let lag = Duration::from_secs(2);
        let took = writer_on_stuck_socket(Duration::from_secs(600), Some(lag)).await;
        assert!(took <= lag + CLOSE_GRACE, "{took:?}");
    }
}
