//! Database pings for health checks, shared among the checks that arrive together.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::Store;

/// How long a ping's answer stands for the health checks that follow it.
pub const PING_REUSE: Duration = Duration::from_millis(1000);

/// Runs database pings for health checks: a check that arrives while a ping is under way
/// waits for that ping, and a ping's answer stands for [`PING_REUSE`]. A flood of checks
/// (load balancers, orchestrators) then costs the database one round trip a second, and the
/// answer is never older than that.
#[derive(Default)]
pub struct HealthProbe {
    last: Mutex<Option<Ping>>,
}

/// A ping shared by the checks that wait for it: whether it succeeded, and when it ended.
type Ping = Shared<BoxFuture<'static, (bool, Instant)>>;

impl HealthProbe {
    /// Whether the database answers a ping.
    pub async fn database_ok(&self, store: &Arc<dyn Store>) -> bool {
        let ping = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            match last.as_ref().map(|ping| (ping, ping.peek())) {
                Some((_, Some((ok, at)))) if at.elapsed() < PING_REUSE => return *ok,
                Some((ping, None)) => ping.clone(),
                _ => {
                    let store = Arc::clone(store);
                    let ping = async move {
                        let ok = match store.ping().await {
                            Ok(()) => true,
                            Err(err) => {
                                tracing::warn!(error = %err, "database health check failed");
                                false
                            }
                        };
                        (ok, Instant::now())
                    }
                    .boxed()
                    .shared();
                    *last = Some(ping.clone());
                    ping
                }
            }
        };
        ping.await.0
    }
}
