//! One WebSocket connection's wire, in one task: frames from the client go to its handler one
//! at a time; the handler's answers and the live events the connection follows are written
//! in order, with a ping now and then; the connection ends when the client leaves, goes idle,
//! does not take a frame in time, falls behind its events, or the service shuts down.
//!
//! Reading and writing are polled side by side in one future over the unsplit socket, rather
//! than in a reader and a writer task: they still wait on each other for nothing (a client
//! that takes no frames does not stop its frames being read, a frame being handled does not
//! stop answers going out), and an idle connection holds one task, one timer and no lock.
//! Written over any stream and sink of messages, so it runs on channels in tests.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures::{Sink, SinkExt, Stream};
use tokio::time::{sleep_until, timeout, Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::frames;
use crate::chat::events::{GenerationId, LiveEvent, TurnKind};
use crate::chat::hub::{Deliveries, Delivery};
use crate::ids::IdCodec;
use crate::queue;

/// Close code for a server going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a normal close (idle timeout).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a policy violation (a client too slow to keep up).
pub const CLOSE_POLICY: u16 = 1008;
/// How long a connection closed for being too slow may take to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What handles a connection's frames.
pub trait Handler: Send + Sized + 'static {
    /// Runs once, before the first frame is read.
    fn open(&mut self) -> impl Future<Output = ()> + Send;

    /// Handles a text or binary frame, giving the handler back when done. Boxed: handling
    /// takes far more state than waiting, and an idle connection should hold only the latter.
    fn handle(self, message: Message) -> Pin<Box<dyn Future<Output = Self> + Send>>;

    /// Runs once, when the connection has ended, before what was queued is sent and the
    /// socket closed.
    fn closed(self);
}

/// How a connection is paced.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How often the client is pinged.
    pub ping_every: Duration,
    /// How long a frame may take to be taken by the client.
    pub send_timeout: Duration,
    /// How long the client may stay silent while no frame of its is being handled.
    pub idle_timeout: Duration,
    /// The largest frame read, named in the close frame of a larger one.
    pub max_frame_bytes: usize,
}

/// What a connection writes: its handler's answers, then the live events it follows.
pub struct Outgoing {
    /// The handler's answers, rendered.
    pub answers: queue::Receiver<String>,
    /// The events of the conversations the connection follows; a connection whose queue
    /// failed fell too far behind, and is closed.
    pub live: Deliveries,
    /// Renders the events' public IDs.
    pub ids: Arc<IdCodec>,
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client closed or left, or the socket failed.
    Left,
    /// Nothing came from the client for the idle timeout.
    Idle,
    /// The client sent a frame over the size limit.
    TooBig,
    /// The service is shutting down.
    ShuttingDown,
    /// A frame was not taken within the send timeout, or the connection fell behind.
    TooSlow,
}

/// Serves a connection until it ends (`shutdown` among the ways), tells `handler`, then
/// closes it.
///
/// Everything is set up before the returned future runs: a future keeps its arguments for
/// its whole life, and an idle connection should not hold a moved-from copy of its socket.
pub fn serve<S, H>(
    socket: S,
    handler: H,
    outgoing: Outgoing,
    limits: Limits,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message> + Unpin + Send + 'static,
    H: Handler,
{
    let now = Instant::now();
    let mut wire = Wire {
        socket,
        reader: Some(Reader::Waiting(handler)),
        answers: outgoing.answers,
        live: outgoing.live,
        ids: outgoing.ids,
        resumed: Vec::new(),
        pending: Vec::new().into_iter(),
        writing_since: None,
        ping_due: false,
        next_ping: now + limits.ping_every,
        heard: now,
        limits,
    };
    async move {
        if let Some(Reader::Waiting(handler)) = &mut wire.reader {
            handler.open().await;
        }
        wire.heard = Instant::now();
        let mut timer = pin!(sleep_until(wire.next_ping));
        let mut shutdown = pin!(shutdown.cancelled_owned());
        let ending = poll_fn(|cx| {
            if shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ending::ShuttingDown);
            }
            wire.poll_run(cx, timer.as_mut())
        })
        .await;
        // Boxed: it happens once, and an idle connection should not carry its state.
        Box::pin(wire.finish(ending)).await;
    }
}

/// Whose turn the reading side is.
enum Reader<H> {
    /// Waiting for the client's next frame.
    Waiting(H),
    /// Handling a frame; the next is read once it is done.
    Handling(Pin<Box<dyn Future<Output = H> + Send>>),
}

/// A connection's state between polls.
struct Wire<S, H> {
    socket: S,
    /// Always `Some` but while a frame is handed to the handler.
    reader: Option<Reader<H>>,
    answers: queue::Receiver<String>,
    live: Deliveries,
    ids: Arc<IdCodec>,
    /// Replies this connection resumed: their end is its `send_message` answer, where other
    /// connections get a broadcast.
    resumed: Vec<GenerationId>,
    /// The rest of a delivery's frames.
    pending: std::vec::IntoIter<String>,
    /// When the frame being written was handed to the socket: it is out once flushed,
    /// within the send timeout.
    writing_since: Option<Instant>,
    ping_due: bool,
    next_ping: Instant,
    /// When the client was last heard from, or its last frame handled.
    heard: Instant,
    limits: Limits,
}

impl<S, H> Wire<S, H>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message> + Unpin,
    H: Handler,
{
    /// Makes every step that can be made now; pending with a wake-up registered for each way
    /// forward, ready when the connection ends.
    fn poll_run(&mut self, cx: &mut Context<'_>, timer: Pin<&mut Sleep>) -> Poll<Ending> {
        if self.live.poll_failed(cx).is_ready() {
            return Poll::Ready(Ending::TooSlow);
        }
        match self.step(cx, timer) {
            Ok(()) => Poll::Pending,
            Err(ending) => Poll::Ready(ending),
        }
    }

    fn step(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Result<(), Ending> {
        loop {
            self.poll_handling(cx);
            if self.poll_read(cx)? {
                continue;
            }
            self.poll_write(cx)?;
            if !self.poll_timer(cx, timer.as_mut())? {
                return Ok(());
            }
        }
    }

    /// Moves the handling of a frame on; once done, the next frame may be read.
    fn poll_handling(&mut self, cx: &mut Context<'_>) {
        if let Some(Reader::Handling(handling)) = &mut self.reader {
            if let Poll::Ready(handler) = handling.as_mut().poll(cx) {
                self.reader = Some(Reader::Waiting(handler));
                self.heard = Instant::now();
            }
        }
    }

    /// Reads the client's frames while none is being handled; true when one started being
    /// handled.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, Ending> {
        while let Some(Reader::Waiting(_)) = &self.reader {
            let message = match Pin::new(&mut self.socket).poll_next(cx) {
                Poll::Pending => return Ok(false),
                Poll::Ready(Some(Ok(message))) => message,
                Poll::Ready(Some(Err(err))) if is_oversize(&err) => return Err(Ending::TooBig),
                Poll::Ready(Some(Err(_)) | None) => return Err(Ending::Left),
            };
            // Any traffic, pongs included, proves the client alive.
            self.heard = Instant::now();
            match message {
                Message::Text(_) | Message::Binary(_) => {
                    if let Some(Reader::Waiting(handler)) = self.reader.take() {
                        self.reader = Some(Reader::Handling(handler.handle(message)));
                    }
                    return Ok(true);
                }
                Message::Close(_) => return Err(Ending::Left),
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        Ok(false)
    }

    /// Writes queued frames, one at a time, until the socket or the queues have no more
    /// ready. A frame is taken from its queue only once the socket is ready for it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), Ending> {
        loop {
            if self.writing_since.is_some() {
                match Pin::new(&mut self.socket).poll_flush(cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Err(_)) => return Err(Ending::Left),
                    Poll::Ready(Ok(())) => self.writing_since = None,
                }
            }
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Pending => {
                    // A socket not ready still holds something of ours: the timeout runs.
                    self.writing_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Poll::Ready(Err(_)) => return Err(Ending::Left),
                Poll::Ready(Ok(())) => {}
            }
            let Some(message) = self.next_message(cx) else {
                return Ok(());
            };
            let started = Pin::new(&mut self.socket).start_send(message);
            started.map_err(|_| Ending::Left)?;
            self.writing_since = Some(Instant::now());
        }
    }

    /// The next frame to write: a due ping, the rest of a delivery, an answer, a delivery.
    fn next_message(&mut self, cx: &mut Context<'_>) -> Option<Message> {
        if std::mem::take(&mut self.ping_due) {
            return Some(Message::Ping(Default::default()));
        }
        loop {
            if let Some(text) = self.pending.next() {
                return Some(Message::Text(text.into()));
            }
            // A delivery's frames are gone: so is their buffer.
            self.pending = Vec::new().into_iter();
            if let Poll::Ready(Some(text)) = self.answers.poll_recv(cx) {
                return Some(Message::Text(text.into()));
            }
            match self.live.poll_recv(cx) {
                Poll::Ready(Some(delivery)) => self.pending = self.render(delivery).into_iter(),
                Poll::Ready(None) | Poll::Pending => return None,
            }
        }
    }

    /// Waits for the next deadline; true when there is more to do (a ping came due, or the
    /// timer is to be set again). The timer is moved earlier when a deadline comes before
    /// it, never later: one that passes with nothing due (a frame flushed long since) only
    /// re-arms it. Every frame written sets a send deadline and its flush clears it; this
    /// costs a wake-up per send timeout instead of two timer resets per frame.
    fn poll_timer(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
    ) -> Result<bool, Ending> {
        let send_by = self
            .writing_since
            .map(|since| since + self.limits.send_timeout);
        let waiting = matches!(self.reader, Some(Reader::Waiting(_)));
        let idle_at = waiting.then(|| self.heard + self.limits.idle_timeout);
        let deadline = [send_by, idle_at]
            .into_iter()
            .flatten()
            .fold(self.next_ping, Instant::min);
        if deadline < timer.deadline() || timer.is_elapsed() {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Ok(false);
        }
        let now = Instant::now().max(timer.deadline());
        if send_by.is_some_and(|by| by <= now) {
            return Err(Ending::TooSlow);
        }
        if idle_at.is_some_and(|at| at <= now) {
            return Err(Ending::Idle);
        }
        if self.next_ping <= now {
            self.ping_due = true;
            self.next_ping = now + self.limits.ping_every;
        }
        Ok(true)
    }

    /// The frames of a delivery, in order.
    fn render(&mut self, delivery: Delivery) -> Vec<String> {
        match delivery {
            Delivery::Event(event) => self.render_event(&event).into_iter().collect(),
            Delivery::Replay(events) => {
                // A replay goes only to the connection that resumed: the reply is its own.
                if let Some(generation) = events.first().and_then(LiveEvent::generation) {
                    self.resumed.push(generation.clone());
                }
                events.iter().filter_map(|e| self.render_event(e)).collect()
            }
        }
    }

    fn render_event(&mut self, event: &LiveEvent) -> Option<String> {
        let generation = event.generation();
        let mine = generation.is_some_and(|g| self.resumed.contains(g));
        if mine && event.ends_reply() {
            self.resumed.retain(|g| Some(g) != generation);
        }
        frames::live(&self.ids, event, mine.then_some(TurnKind::Send))
    }

    /// Ends the connection: no more answers are taken, a frame being handled finishes and the
    /// handler is told, what was queued before goes out, then the close frame.
    async fn finish(mut self, ending: Ending) {
        self.answers.close();
        match self.reader.take() {
            Some(Reader::Waiting(handler)) => handler.closed(),
            Some(Reader::Handling(handling)) => handling.await.closed(),
            None => {}
        }
        let close = match ending {
            Ending::TooSlow => {
                // The client may reconnect and resume. One that takes no frames gets one
                // second for the close frame and the close together, not a send timeout each.
                let frame = close_frame(CLOSE_POLICY, "too slow");
                let _ = timeout(CLOSE_GRACE, async {
                    if self.socket.send(Message::Close(Some(frame))).await.is_ok() {
                        let _ = self.socket.close().await;
                    }
                })
                .await;
                return;
            }
            Ending::Left => None,
            Ending::Idle => Some(close_frame(CLOSE_NORMAL, "idle timeout")),
            Ending::ShuttingDown => Some(close_frame(CLOSE_GOING_AWAY, "server shutting down")),
            Ending::TooBig => {
                let reason = format!("frame larger than {} bytes", self.limits.max_frame_bytes);
                Some(close_frame(CLOSE_TOO_BIG, &reason))
            }
        };
        let within = self.limits.send_timeout;
        if self.drain(within).await.is_ok() {
            if let Some(frame) = close {
                let _ = timeout(within, self.socket.send(Message::Close(Some(frame)))).await;
            }
        }
        // Also answers a close from the client, when nothing more could be sent.
        let _ = timeout(within, self.socket.close()).await;
    }

    /// Writes what was being written or queued, each frame within `within`; stops at the
    /// first that is not.
    async fn drain(&mut self, within: Duration) -> Result<(), ()> {
        let written = |sent: Result<Result<(), S::Error>, _>| match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        };
        if self.writing_since.is_some() {
            written(timeout(within, self.socket.flush()).await)?;
        }
        for text in std::mem::take(&mut self.pending) {
            written(timeout(within, self.socket.send(Message::Text(text.into()))).await)?;
        }
        while let Some(text) = self.answers.recv().await {
            written(timeout(within, self.socket.send(Message::Text(text.into()))).await)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;
    use futures::StreamExt;
    use tokio::sync::Notify;
    use tokio::task::JoinHandle;

    use super::*;

    /// A socket over channels: the client's frames come from one, the connection's go to
    /// the other.
    struct Channels {
        incoming: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
        outgoing: mpsc::UnboundedSender<Message>,
    }

    impl Stream for Channels {
        type Item = Result<Message, axum::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_next_unpin(cx)
        }
    }

    impl Sink<Message> for Channels {
        type Error = axum::Error;

        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.outgoing)
                .poll_ready(cx)
                .map_err(axum::Error::new)
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            Pin::new(&mut self.outgoing)
                .start_send(item)
                .map_err(axum::Error::new)
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.outgoing)
                .poll_flush(cx)
                .map_err(axum::Error::new)
        }

        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.outgoing)
                .poll_close(cx)
                .map_err(axum::Error::new)
        }
    }

    /// Channels whose every flush takes `delay` (on the paused clock).
    struct SlowFlush {
        inner: Channels,
        delay: Duration,
        flushing: Option<Pin<Box<Sleep>>>,
    }

    impl Stream for SlowFlush {
        type Item = Result<Message, axum::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Pin::new(&mut self.inner).poll_next(cx)
        }
    }

    impl Sink<Message> for SlowFlush {
        type Error = axum::Error;

        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.inner).poll_ready(cx)
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            Pin::new(&mut self.inner).start_send(item)
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            let delay = self.delay;
            let flushing = self
                .flushing
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if flushing.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.flushing = None;
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.inner).poll_close(cx)
        }
    }

    /// A client that sends nothing and takes no frames: the socket is never ready.
    struct Stuck;

    impl Stream for Stuck {
        type Item = Result<Message, axum::Error>;

        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Pending
        }
    }

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

    /// Answers each text frame with `echo: <text>`; a frame `hold` is answered only once
    /// `release` is notified.
    struct Echo {
        answers: queue::Sender<String>,
        release: Arc<Notify>,
    }

    impl Handler for Echo {
        async fn open(&mut self) {}

        fn handle(self, message: Message) -> Pin<Box<dyn Future<Output = Self> + Send>> {
            Box::pin(async move {
                if let Message::Text(text) = message {
                    if text.as_str() == "hold" {
                        self.release.notified().await;
                    }
                    let _ = self.answers.send(format!("echo: {}", text.as_str())).await;
                }
                self
            })
        }

        fn closed(self) {}
    }

    const LIMITS: Limits = Limits {
        ping_every: Duration::from_secs(3600),
        send_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(3600),
        max_frame_bytes: 1024,
    };

    /// The other ends of a connection's socket, queues and signals.
    struct Client {
        sends: mpsc::UnboundedSender<Result<Message, axum::Error>>,
        gets: mpsc::UnboundedReceiver<Message>,
        answers: queue::Sender<String>,
        live: queue::Sender<Delivery>,
        release: Arc<Notify>,
        shutdown: CancellationToken,
    }

    impl Client {
        fn text(&self, text: &str) {
            self.sends
                .unbounded_send(Ok(Message::Text(text.into())))
                .unwrap();
        }

        async fn next(&mut self) -> Message {
            self.gets
                .next()
                .await
                .expect("the connection wrote nothing more")
        }
    }

    /// A connection's future over `socket` (not yet running) and the other ends of it.
    fn connection<S>(socket: S, limits: Limits) -> (impl Future<Output = ()>, Client)
    where
        S: Stream<Item = Result<Message, axum::Error>> + Sink<Message> + Unpin + Send + 'static,
    {
        let (answers, answers_rx) = queue::bounded(8);
        let (live, live_rx) = queue::bounded(8);
        let (sends, _) = mpsc::unbounded();
        let (_, gets) = mpsc::unbounded();
        let release = Arc::new(Notify::new());
        let client = Client {
            sends,
            gets,
            answers: answers.clone(),
            live,
            release: release.clone(),
            shutdown: CancellationToken::new(),
        };
        let outgoing = Outgoing {
            answers: answers_rx,
            live: live_rx,
            ids: Arc::new(IdCodec::new("salt")),
        };
        let echo = Echo { answers, release };
        let shutdown = client.shutdown.clone();
        (serve(socket, echo, outgoing, limits, shutdown), client)
    }

    /// A connection over channels, running.
    fn connected(limits: Limits) -> (JoinHandle<()>, Client) {
        let (sends, incoming) = mpsc::unbounded();
        let (outgoing, gets) = mpsc::unbounded();
        let (served, client) = connection(Channels { incoming, outgoing }, limits);
        let client = Client {
            sends,
            gets,
            ..client
        };
        (tokio::spawn(served), client)
    }

    fn close_code(message: &Message) -> Option<u16> {
        match message {
            Message::Close(Some(frame)) => Some(frame.code),
            _ => None,
        }
    }

    #[tokio::test]
    async fn frames_are_answered_in_order() {
        let (_served, mut client) = connected(LIMITS);
        client.text("a");
        client.text("b");
        assert_eq!(client.next().await, Message::Text("echo: a".into()));
        assert_eq!(client.next().await, Message::Text("echo: b".into()));
    }

    #[tokio::test]
    async fn answers_go_out_while_a_frame_is_handled_and_the_next_frame_waits_for_it() {
        let (_served, mut client) = connected(LIMITS);
        client.text("hold");
        client.text("after");
        client
            .answers
            .send("from elsewhere".to_owned())
            .await
            .unwrap();
        assert_eq!(client.next().await, Message::Text("from elsewhere".into()));
        client.release.notify_one();
        assert_eq!(client.next().await, Message::Text("echo: hold".into()));
        assert_eq!(client.next().await, Message::Text("echo: after".into()));
    }

    #[tokio::test]
    async fn the_end_goes_out_after_the_answers_queued_before_it() {
        let (sends, incoming) = mpsc::unbounded();
        let (outgoing, gets) = mpsc::unbounded();
        let (served, client) = connection(Channels { incoming, outgoing }, LIMITS);
        for answer in ["first", "second"] {
            client.answers.send(answer.to_owned()).await.unwrap();
        }
        client.shutdown.cancel();
        served.await;
        drop(sends);
        let written: Vec<Message> = gets.collect().await;
        assert_eq!(written.len(), 3, "{written:?}");
        assert_eq!(written[0], Message::Text("first".into()));
        assert_eq!(written[1], Message::Text("second".into()));
        assert_eq!(close_code(&written[2]), Some(CLOSE_GOING_AWAY));
        // Nothing is taken after the end.
        assert_eq!(
            client.answers.offer("late".to_owned()),
            Err(queue::Refused::Closed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_flushed_within_the_send_timeout_leaves_the_connection_open() {
        let (sends, incoming) = mpsc::unbounded();
        let (outgoing, gets) = mpsc::unbounded();
        let socket = SlowFlush {
            inner: Channels { incoming, outgoing },
            delay: LIMITS.send_timeout / 2,
            flushing: None,
        };
        let (served, client) = connection(socket, LIMITS);
        let served = tokio::spawn(served);
        let mut client = Client {
            sends,
            gets,
            ..client
        };
        client.text("a");
        assert_eq!(client.next().await, Message::Text("echo: a".into()));
        // Past the send deadline of the first answer, long since flushed.
        tokio::time::sleep(LIMITS.send_timeout * 2).await;
        client.text("b");
        assert_eq!(client.next().await, Message::Text("echo: b".into()));
        assert!(!served.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed_as_idle() {
        let limits = Limits {
            ping_every: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(25),
            ..LIMITS
        };
        let started = Instant::now();
        let (served, mut client) = connected(limits);
        assert!(matches!(client.next().await, Message::Ping(_)));
        assert!(matches!(client.next().await, Message::Ping(_)));
        assert_eq!(close_code(&client.next().await), Some(CLOSE_NORMAL));
        assert_eq!(started.elapsed(), Duration::from_secs(25));
        served.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_from_the_client_keeps_it_from_going_idle() {
        let limits = Limits {
            idle_timeout: Duration::from_secs(25),
            ..LIMITS
        };
        let started = Instant::now();
        let (served, mut client) = connected(limits);
        tokio::time::sleep(Duration::from_secs(20)).await;
        client
            .sends
            .unbounded_send(Ok(Message::Pong(Default::default())))
            .unwrap();
        assert_eq!(close_code(&client.next().await), Some(CLOSE_NORMAL));
        assert_eq!(started.elapsed(), Duration::from_secs(45));
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_closes_with_1009() {
        let (served, mut client) = connected(LIMITS);
        let too_long = tungstenite::error::CapacityError::MessageTooLong {
            size: 2048,
            max_size: 1024,
        };
        let error = axum::Error::new(tungstenite::Error::Capacity(too_long));
        client.sends.unbounded_send(Err(error)).unwrap();
        let close = client.next().await;
        assert_eq!(close_code(&close), Some(CLOSE_TOO_BIG));
        served.await.unwrap();
    }

    /// Runs a connection over a stuck socket with one answer queued; `lag_after` marks it
    /// lagged that long after the start. Returns how long (paused clock) it took to end.
    async fn on_stuck_socket(send_timeout: Duration, lag_after: Option<Duration>) -> Duration {
        let limits = Limits {
            send_timeout,
            ..LIMITS
        };
        let (served, client) = connection(Stuck, limits);
        client.answers.send("a frame".to_owned()).await.unwrap();
        if let Some(after) = lag_after {
            let live = client.live.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                live.fail();
            });
        }
        let started = Instant::now();
        served.await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_no_frames_is_let_go_a_second_after_the_send_timeout() {
        let send_timeout = Duration::from_secs(10);
        let took = on_stuck_socket(send_timeout, None).await;
        assert!(took >= send_timeout, "{took:?}");
        assert!(took <= send_timeout + CLOSE_GRACE, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_falls_behind_is_let_go_a_second_after() {
        let lag = Duration::from_secs(2);
        let took = on_stuck_socket(Duration::from_secs(600), Some(lag)).await;
        assert!(took <= lag + CLOSE_GRACE, "{took:?}");
    }
}
