//! A stand-in analytics service for load tests: accepts every request (`ok`) or accepts the
//! connection and never answers (`stall`).
//!
//! ```text
//! cargo run --release --example analytics_receiver -- ok 127.0.0.1:8002
//! cargo run --release --example analytics_receiver -- stall 127.0.0.1:8002
//! ```
//!
//! It prints how many requests arrived, every five seconds while they arrive.
//!
//! The load test of an authenticated list with the analytics service absent, healthy and
//! stalled runs the same `wrk` against the service started without `ANALYTICS_SERVICE_URL`,
//! then with it pointing at this receiver in each mode:
//!
//! ```text
//! TOKEN=$(AUTH_SECRET_KEY=bench chat-service token --sub bench)
//! wrk -t2 -c32 -d20s -H "Authorization: Bearer $TOKEN" \
//!     http://127.0.0.1:8000/api/v1/users/me/conversations
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use tokio::net::TcpListener;

#[derive(Clone)]
struct Receiver {
    stall: bool,
    received: Arc<AtomicU64>,
}

async fn receive(State(receiver): State<Receiver>) -> StatusCode {
    receiver.received.fetch_add(1, Ordering::Relaxed);
    if receiver.stall {
        std::future::pending::<()>().await;
    }
    StatusCode::OK
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let stall = match args.next().as_deref() {
        Some("ok") | None => false,
        Some("stall") => true,
        Some(other) => {
            eprintln!("unknown mode {other:?}: expected `ok` or `stall`");
            std::process::exit(2);
        }
    };
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8002".to_owned());
    let receiver = Receiver {
        stall,
        received: Arc::new(AtomicU64::new(0)),
    };
    let counter = receiver.received.clone();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = counter.load(Ordering::Relaxed);
            if now != last {
                println!("{now} requests received");
                last = now;
            }
        }
    });
    let app = Router::new().fallback(receive).with_state(receiver);
    let listener = TcpListener::bind(&address).await?;
    println!(
        "analytics receiver ({}) on http://{}",
        if stall { "stall" } else { "ok" },
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
