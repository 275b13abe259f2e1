//! The deadline of a request body: a client that declares a body and sends it too slowly (or
//! never) is answered `408 Request Timeout` and the connection closed, instead of holding a
//! handler and a connection for as long as it likes.
//!
//! The clock starts when the handler first reads the body, so time spent before (waiting for
//! the database, say) is not the client's; from then on the whole body must arrive within
//! the limit, however it is dripped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use tokio::time::Sleep;

use crate::error::ApiError;

/// Middleware (`axum::middleware::from_fn_with_state` with the limit): gives the request's
/// body a deadline of `limit` (zero: none), and answers 408 when it passed, whatever the
/// handler made of the failed read.
pub async fn limit_body_time(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if limit.is_zero() || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&timed_out);
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            limit,
            deadline: None,
            timed_out: flag,
        })
    });
    let response = next.run(request).await;
    if !timed_out.load(Ordering::Relaxed) {
        return response;
    }
    let mut response = ApiError::RequestTimeout(format!(
        "The request body did not arrive within {} seconds",
        limit.as_secs_f32()
    ))
    .into_response();
    // What is left of the body is unread: the connection cannot carry another request.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The body read past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// A body that fails with [`BodyTimedOut`] once `limit` has passed since its first read.
struct DeadlineBody {
    inner: Body,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let limit = this.limit;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        // What has arrived is taken even at the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if deadline.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use axum::Router;
    use futures::StreamExt;
    use tower::ServiceExt;

    use super::*;

    /// A router whose handler reads the whole body, behind the deadline.
    fn app(limit: Duration) -> Router {
        Router::new()
            .route(
                "/",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .layer(axum::middleware::from_fn_with_state(limit, limit_body_time))
    }

    fn request(body: Body) -> Request {
        Request::post("/").body(body).unwrap()
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_is_answered_408_and_closes() {
        let (mut sender, receiver) =
            futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        sender.try_send(Ok(Bytes::from_static(b"part"))).unwrap();
        let body = Body::from_stream(receiver);

        let response = app(Duration::from_millis(200))
            .oneshot(request(body))
            .await
            .unwrap();

        assert_eq!(response.status(), 408);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        drop(sender);
    }

    #[tokio::test]
    async fn a_body_that_arrives_in_time_is_read_whole() {
        let chunks = futures::stream::iter(["a", "bb", "ccc"]).then(|chunk| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, std::io::Error>(Bytes::from(chunk))
        });
        let response = app(Duration::from_secs(30))
            .oneshot(request(Body::from_stream(chunks)))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn the_whole_body_shares_one_deadline() {
        // Each chunk in time for a per-chunk timeout; all of them together are not.
        let chunks = futures::stream::iter(0..10).then(|_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"x"))
        });
        let response = app(Duration::from_millis(500))
            .oneshot(request(Body::from_stream(chunks)))
            .await
            .unwrap();
        assert_eq!(response.status(), 408);
    }
}
