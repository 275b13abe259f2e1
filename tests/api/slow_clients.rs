//! Clients that hold connections without finishing their requests (slowloris), over raw
//! sockets: unfinished headers are cut after `HEADER_READ_TIMEOUT_SECONDS`, a declared body
//! that does not arrive is answered 408 after `BODY_READ_TIMEOUT_SECONDS`, and one address
//! holds at most `MAX_CONNECTIONS_PER_IP` connections that carried no authenticated request.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("the service accepts connections")
}

/// Everything the server sends until it closes the connection; panics if it never does.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut buffer = [0; 4096];
        // A reset counts as closed, like an orderly end.
        while let Ok(read @ 1..) = stream.read(&mut buffer).await {
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the service kept the connection open; it sent {:?}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// Sends one request and reads its response (a `Content-Length` body): its status, or `None`
/// when the connection was closed instead.
async fn exchange(stream: &mut TcpStream, request: &str) -> Option<u16> {
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    let (head_end, length) = loop {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        received.extend_from_slice(&buffer[..read]);
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse::<usize>().unwrap());
            break (end + 4, length);
        }
    };
    while received.len() < head_end + length {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        received.extend_from_slice(&buffer[..read]);
    }
    let status = String::from_utf8_lossy(&received[9..12]).parse().ok()?;
    Some(status)
}

fn get(path: &str, token: Option<&str>) -> String {
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{authorization}\r\n")
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_after_the_header_timeout() {
    let app = spawn_app_with(
        TestOptions::new().settings(|s| s.limits.header_read_timeout = Duration::from_secs(1)),
    )
    .await;

    // Headers dripped a byte at a time never finish: the clock does not restart per byte.
    let mut dripping = connect(&app).await;
    let started = Instant::now();
    dripping
        .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = dripping.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..600 {
            if writer.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut received)).await;
    assert!(closed.is_ok(), "the dripping connection stayed open");
    assert!(started.elapsed() >= Duration::from_secs(1));
    drip.abort();
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );

    // A connection that sends nothing at all is closed too.
    let mut silent = connect(&app).await;
    assert_eq!(read_until_closed(&mut silent).await, "");

    // Requests sent in time are answered as ever.
    let mut prompt = connect(&app).await;
    assert_eq!(
        exchange(&mut prompt, &get("/health", None)).await,
        Some(200)
    );
}

#[tokio::test]
async fn a_declared_body_that_never_arrives_is_answered_408() {
    let app = spawn_app_with(
        TestOptions::new().settings(|s| s.limits.body_read_timeout = Duration::from_secs(1)),
    )
    .await;
    let token = app.token("sloth", USER);
    let mut stream = connect(&app).await;
    let started = Instant::now();
    let head = format!(
        "POST /api/v1/users/me/conversations HTTP/1.1\r\nHost: test\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"title\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();

    let answer = read_until_closed(&mut stream).await;

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    assert!(answer.contains(r#""detail":"#), "{answer}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(app.count("conversations").await, 0);
}

#[tokio::test]
async fn one_address_holds_only_so_many_connections_without_authentication() {
    let app =
        spawn_app_with(TestOptions::new().settings(|s| s.limits.max_connections_per_ip = 3)).await;
    let health = get("/health", None);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&app).await;
        assert_eq!(exchange(&mut stream, &health).await, Some(200));
        held.push(stream);
    }

    // A fourth is closed as soon as it is accepted, unanswered.
    let mut fourth = connect(&app).await;
    let _ = fourth.write_all(health.as_bytes()).await;
    assert_eq!(read_until_closed(&mut fourth).await, "");

    // An authenticated request takes its connection out of the count.
    let token = app.token("counted", USER);
    let me = get("/api/v1/users/me", Some(&token));
    assert_eq!(exchange(&mut held[0], &me).await, Some(200));
    let mut fifth = connect(&app).await;
    assert_eq!(exchange(&mut fifth, &health).await, Some(200));
    let mut sixth = connect(&app).await;
    let _ = sixth.write_all(health.as_bytes()).await;
    assert_eq!(read_until_closed(&mut sixth).await, "");

    // A connection that closes makes room (once the service has seen it close).
    drop(held.remove(1));
    let give_up = Instant::now() + PATIENCE;
    loop {
        let mut stream = connect(&app).await;
        if exchange(&mut stream, &health).await == Some(200) {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "no connection was served after one closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
