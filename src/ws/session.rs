//! What one WebSocket connection does with its frames: chat turns, conversations, stops
//! and resumes, each answered with a frame of its own. The wire itself (reading, writing,
//! pings, deadlines, closing) is [`super::connection`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::Message;
use futures::{Sink, Stream};

use super::connection::{self, Handler, Limits, Outgoing};
use super::frames::{self, ClientFrame, ConversationRef, EditRequest, EndedOut, FailureData};
use super::frames::{LimitedOut, NotGenerating, PongOut, RegenerateRequest, ResumeRequest};
use super::frames::{SendMessage, ServerFrame, StartConversation};
use super::frames::{StartedOut, StoppedOut, Success};
use crate::auth::AuthUser;
use crate::chat::events::TurnKind;
use crate::chat::hub::{GenerationOwner, Member};
use crate::db::Scope;
use crate::ids::IdCodec;
use crate::metrics::GaugeGuard;
use crate::queue;
use crate::service::chat::{self, Turn, TurnAction, TurnRequest};
use crate::service::conversations::{self, CreateConversation};
use crate::service::usage::{self, Account, Role};
use crate::service::ServiceError;
use crate::state::AppState;

/// Answers queued for one connection.
const OUTBOX_CAPACITY: usize = 256;

/// Where a connection's own answers are queued, rendered, for its wire; a sender waits
/// while it is full. Allocates nothing while the connection is idle.
type Outbox = queue::Sender<String>;

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
pub fn run<S>(state: AppState, peer: Peer, socket: S) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message> + Unpin + Send + 'static,
{
    let (member, live) = state.hub.live.connect(true);
    let (outbox, answers) = queue::bounded(OUTBOX_CAPACITY);
    let settings = &state.settings.limits;
    let limits = Limits {
        ping_every: settings.ws_ping_interval,
        send_timeout: settings.ws_send_timeout,
        idle_timeout: settings.ws_idle_timeout,
        max_frame_bytes: settings.ws_max_frame_bytes,
    };
    let outgoing = Outgoing {
        answers,
        live,
        ids: state.ids.clone(),
    };
    let shutdown = state.shutdown.clone();
    let session = Session {
        _open: crate::metrics::ws_connection_opened(),
        state,
        member,
        peer,
        started: Vec::new(),
        outbox,
    };
    connection::serve(socket, session, outgoing, limits, shutdown)
}

struct Session {
    /// Counts the connection as open while it lives.
    _open: GaugeGuard,
    state: AppState,
    member: Member,
    peer: Peer,
    /// Conversations this connection started; all an anonymous connection may touch.
    started: Vec<i64>,
    outbox: Outbox,
}

impl Handler for Session {
    async fn open(&mut self) {
        if let Some(conversation) = self.peer.bound {
            self.state.hub.live.join(conversation, &self.member).await;
        }
    }

    fn handle(mut self, message: Message) -> Pin<Box<dyn Future<Output = Self> + Send>> {
        Box::pin(async move {
            match message {
                Message::Text(text) => self.handle_text(text.as_str()).await,
                _ => {
                    let refusal = Refusal::new("error", "Binary frames are not supported");
                    self.send(refusal.render(&self.state.ids)).await;
                }
            }
            self
        })
    }

    fn closed(self) {
        self.state.hub.live.disconnect(self.member.id);
    }
}

impl Session {
    async fn send(&self, frame: String) {
        let _ = self.outbox.send(frame).await;
    }

    async fn handle_text(&mut self, text: &str) {
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
        self.started.push(conversation.id);
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
            self.member.clone(),
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
    member: Member,
) {
    while let Some(event) = turn.events.next().await {
        let Ok(event) = event else {
            member.lag();
            return;
        };
        let Some(frame) = frames::live(&ids, &event, Some(kind)) else {
            continue;
        };
        if outbox.send(frame).await.is_err() {
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
