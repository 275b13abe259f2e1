//! The chat page: served embedded with its policy headers, beside the JSON API.

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_chat_page_is_html_with_a_strict_policy() {
    let app = spawn_app().await;
    let page = app.get_public("/chat").await;
    page.assert_status(200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let host = app.address.trim_start_matches("http://");
    let policy = page.header("content-security-policy").unwrap();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"),
        "{policy}"
    );
    assert!(
        policy.contains(&format!("connect-src 'self' ws://{host} wss://{host};")),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    // No inline code: every script and style comes from a file.
    assert!(page
        .text
        .contains(r#"<script type="module" src="/chat/app.js"></script>"#));
    assert!(!page.text.contains("<style"));
    assert!(!page.text.contains(" style="));
    assert!(!page.text.contains(" onclick="));
    // A trailing slash is the same page.
    app.get_public("/chat/").await.assert_status(200);
}

#[tokio::test]
async fn the_assets_have_their_types_and_revalidate_with_etags() {
    let app = spawn_app().await;
    for (path, content_type) in [
        ("/chat/app.js", "text/javascript; charset=utf-8"),
        ("/chat/api.js", "text/javascript; charset=utf-8"),
        ("/chat/socket.js", "text/javascript; charset=utf-8"),
        ("/chat/chat.css", "text/css; charset=utf-8"),
        ("/chat/icon.svg", "image/svg+xml"),
    ] {
        let asset = app.get_public(path).await;
        asset.assert_status(200);
        assert_eq!(asset.header("content-type"), Some(content_type), "{path}");
        assert!(asset.text.len() > 100, "{path}");
        assert_eq!(asset.header("x-content-type-options"), Some("nosniff"));
        assert!(asset
            .header("content-security-policy")
            .unwrap()
            .starts_with("default-src 'none'"));
        let etag = asset.header("etag").expect("an ETag").to_owned();
        let again = app
            .send(
                app.request(reqwest::Method::GET, path)
                    .header("if-none-match", &etag),
            )
            .await;
        again.assert_status(304);
        assert!(again.text.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
    }
    app.get_public("/chat/missing.js").await.assert_status(404);
}

#[tokio::test]
async fn the_root_still_answers_json_and_the_page_is_not_in_the_api_document() {
    let app = spawn_app().await;
    let root = app.get_public("/").await;
    root.assert_status(200);
    assert_eq!(root.header("content-type"), Some("application/json"));
    assert_eq!(root.json()["service"], "chat-service");
    let document = app.get_public("/openapi.json").await.json();
    assert!(document["paths"].get("/chat").is_none());
}
