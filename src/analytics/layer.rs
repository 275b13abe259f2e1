//! The middleware that measures every request: Prometheus metrics and an API usage event.
//!
//! It reads the route template before the handler runs and the status and latency after,
//! then pushes the event without waiting (the queue may be full; the event is then dropped
//! and counted). The caller is learned through a [`CallerSlot`] the layer puts in the
//! request's extensions and the authentication extractor fills: extensions that a handler's
//! extractor inserts never reach the response, but a shared slot does.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use chrono::Utc;
use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::event::{ApiUsage, Event};
use super::Analytics;
use crate::metrics;

/// Route label of requests that matched no route: one series for every unknown path.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Where the authentication extractor records who the caller is, for the layer to read
/// after the handler has answered.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(Arc<OnceLock<i64>>);

impl CallerSlot {
    /// Records the caller's user key; the first record wins.
    pub fn record(&self, user_id: i64) {
        let _ = self.0.set(user_id);
    }

    /// The recorded caller, if the request was authenticated.
    pub fn get(&self) -> Option<i64> {
        self.0.get().copied()
    }
}

/// Records every request it wraps. Apply it with `Router::layer` so it runs after routing
/// and sees the matched route.
#[derive(Clone)]
pub struct AnalyticsLayer {
    analytics: Analytics,
    series: Arc<metrics::HttpSeries>,
}

impl AnalyticsLayer {
    /// A layer that sends API usage events through this handle.
    pub fn new(analytics: Analytics) -> Self {
        Self {
            analytics,
            series: Arc::default(),
        }
    }
}

impl<S> Layer<S> for AnalyticsLayer {
    type Service = AnalyticsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnalyticsService {
            inner,
            analytics: self.analytics.clone(),
            series: self.series.clone(),
        }
    }
}

/// The service of [`AnalyticsLayer`].
#[derive(Clone)]
pub struct AnalyticsService<S> {
    inner: S,
    analytics: Analytics,
    series: Arc<metrics::HttpSeries>,
}

impl<S> Service<Request> for AnalyticsService<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        // An Arc inside: cloning it is cheaper than copying the route.
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        let tracking = self.analytics.is_enabled();
        let caller = tracking.then(|| {
            let slot = CallerSlot::default();
            request.extensions_mut().insert(slot.clone());
            (slot, Utc::now())
        });
        // The clone that was made ready is the one to call; keep a fresh clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let analytics = self.analytics.clone();
        let series = self.series.clone();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let elapsed = started.elapsed();
            let status = response.status().as_u16();
            let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
            series.record(&method, route, status, elapsed);
            // Scrapes are the operators' traffic, not API usage.
            if let Some((caller, at)) = caller.filter(|_| route != "/metrics") {
                analytics.track(Event::ApiUsage(ApiUsage {
                    endpoint: route.to_owned(),
                    method: method.as_str().to_owned(),
                    user_id: caller.get(),
                    status_code: status,
                    response_time: elapsed,
                    at,
                }));
            }
            Ok(response)
        })
    }
}
