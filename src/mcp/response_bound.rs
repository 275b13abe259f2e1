//! The byte bound of a server's answers, so that a server that floods (a huge body, one SSE
//! event that never ends, SSE events that never stop) costs the service a few MiB and one
//! failed list or call, not its memory or the whole timeout.
//!
//! [`BoundedHttp`], the HTTP client of one session, has rmcp bound a JSON body and one SSE
//! event at the bound as it reads them (rmcp's response limits), and counts the events of all
//! the session's SSE streams together, ending the stream past the bound.
//! Either way the list or call learns at once ([`ResponseBound::enforce`]) and fails as too
//! large, and the session is dropped.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use futures::{future, StreamExt};
use reqwest13::header::{HeaderName, HeaderValue};
use rmcp::{
    model::ClientJsonRpcMessage,
    transport::{
        common::client_side_sse::BoxedSseResponse,
        streamable_http_client::{
            StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
            StreamableHttpResponseLimits,
        },
    },
};
use tokio_util::sync::CancellationToken;

use super::error::McpError;

/// The bytes one list or call may receive from its server, and whether they were passed.
/// Cheap to clone: the clones share the count.
#[derive(Debug, Clone)]
pub(crate) struct ResponseBound {
    inner: Arc<Count>,
}

#[derive(Debug)]
struct Count {
    max: usize,
    received: AtomicUsize,
    passed: CancellationToken,
}

impl ResponseBound {
    /// A bound of `max` bytes, none received yet.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Count {
                max,
                received: AtomicUsize::new(0),
                passed: CancellationToken::new(),
            }),
        }
    }

    /// The bound in bytes.
    pub(crate) fn max(&self) -> usize {
        self.inner.max
    }

    /// Runs `work`, which fails with [`McpError::TooLarge`] the moment the bound is passed
    /// (rmcp may only notice later, or never, that the answer it was reading is gone).
    pub(crate) async fn enforce<T>(
        &self,
        work: impl Future<Output = Result<T, McpError>>,
    ) -> Result<T, McpError> {
        tokio::select! {
            biased;
            () = self.inner.passed.cancelled() => Err(McpError::TooLarge(self.inner.max)),
            result = work => result,
        }
    }

    fn pass(&self) {
        self.inner.passed.cancel();
    }

    /// Counts `bytes` received; false, and the bound passed, once they go over it.
    fn receive(&self, bytes: usize) -> bool {
        let before = self.inner.received.fetch_add(bytes, Ordering::Relaxed);
        let within = before.saturating_add(bytes) <= self.inner.max;
        if !within {
            self.pass();
        }
        within
    }

    /// The events of an SSE stream, counted; the stream ends at the first event past the
    /// bound, and rmcp's own error for an event larger than the bound passes it too.
    fn count(&self, events: BoxedSseResponse) -> BoxedSseResponse {
        let bound = self.clone();
        let too_large = format!(
            "SSE event exceeded the maximum size of {} bytes",
            self.max()
        );
        events
            .take_while(move |event| {
                let within = match event {
                    Ok(event) => bound.receive(
                        [&event.data, &event.event, &event.id]
                            .into_iter()
                            .flatten()
                            .map(String::len)
                            .sum(),
                    ),
                    Err(error) => {
                        // rmcp's error type for it is private: its message is what tells it.
                        if error.to_string().ends_with(&too_large) {
                            bound.pass();
                        }
                        true
                    }
                };
                future::ready(within)
            })
            .boxed()
    }
}

/// The HTTP client of one session: the shared client, with the server's answers counted
/// against the session's [`ResponseBound`].
#[derive(Clone)]
pub(crate) struct BoundedHttp {
    http: reqwest13::Client,
    bound: ResponseBound,
}

impl BoundedHttp {
    /// `http`, its answers counted against `bound`.
    pub(crate) fn new(http: reqwest13::Client, bound: ResponseBound) -> Self {
        Self { http, bound }
    }

    /// rmcp's limits, all at the bound (the diagnostic text of an HTTP error stays shorter),
    /// whatever the transport's settings ask.
    fn limits(&self) -> StreamableHttpResponseLimits {
        let mut limits = StreamableHttpResponseLimits::default();
        limits.max_json_response_size = self.bound.max();
        limits.max_sse_event_size = self.bound.max();
        limits.max_error_response_size = limits.max_error_response_size.min(self.bound.max());
        limits
    }
}

type HttpResult<T> = Result<T, StreamableHttpError<reqwest13::Error>>;

/// Only the plain methods: rmcp's `*_with_*` methods fall back to them, and they apply the
/// bound's limits whatever the transport's settings ask.
impl StreamableHttpClient for BoundedHttp {
    type Error = reqwest13::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<StreamableHttpPostResponse> {
        let answer = self
            .http
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                self.limits(),
            )
            .await;
        match answer {
            Ok(StreamableHttpPostResponse::Sse(events, session)) => Ok(
                StreamableHttpPostResponse::Sse(self.bound.count(events), session),
            ),
            Err(error @ StreamableHttpError::ResponseBodyTooLarge { .. }) => {
                self.bound.pass();
                Err(error)
            }
            other => other,
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<()> {
        self.http
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<BoxedSseResponse> {
        let events = self
            .http
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                self.bound.max(),
            )
            .await?;
        Ok(self.bound.count(events))
    }
}
