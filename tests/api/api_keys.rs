//! Personal API keys: made, listed without the secret, used on the REST API and `/v1` with
//! user rights only (whoever made them), revoked (at once, on every instance), expired;
//! refused for a deactivated user, for making keys and on admin routes; admins list and revoke
//! any user's.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use chat_service::db::NewApiKey;
use chat_service::service::api_keys::key_hash;

use crate::helpers::{eventually, spawn_app, TestApp, ADMIN, MANAGER, PATIENCE, USER};
use crate::live::two_instances;

const KEYS: &str = "/api/v1/users/me/api-keys";

/// Makes a key with the JWT `token`; answers the whole creation body.
pub async fn make_key(app: &TestApp, token: &str, body: &Value) -> Value {
    app.post_json(KEYS, token, body)
        .await
        .assert_status(201)
        .json()
}

/// A new key of the JWT `token`'s user.
pub async fn new_key(app: &TestApp, token: &str) -> String {
    make_key(app, token, &json!({"name": "script"})).await["key"]
        .as_str()
        .expect("the key")
        .to_owned()
}

#[tokio::test]
async fn a_key_is_answered_once_listed_without_it_and_authenticates_its_user() {
    let app = spawn_app().await;
    let jwt = app.token("kate", USER);
    let created = make_key(&app, &jwt, &json!({"name": "laptop script"})).await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("cs-") && key.len() >= 3 + 43, "{key}");
    assert_eq!(created["name"], "laptop script");
    assert_eq!(created["prefix"], &key[..11]);
    assert!(created["expires_at"].is_null());
    assert!(created["last_used_at"].is_null());

    // The key works on the REST API as its user, with a user's rights.
    let me = app
        .get("/api/v1/users/me", key)
        .await
        .assert_status(200)
        .json();
    assert_eq!(me["username"], "kate");
    app.get("/api/v1/users", key).await.assert_status(403);
    app.get("/v1/models", key).await.assert_status(200);

    let listed = app.get(KEYS, &jwt).await;
    listed.assert_status(200);
    assert_eq!(listed.total(), 1);
    let list = listed.json();
    assert_eq!(list[0]["id"], created["id"]);
    assert_eq!(list[0]["prefix"], created["prefix"]);
    assert!(list[0].get("key").is_none(), "{list}");
    assert!(!listed.text.contains(key), "the secret is never listed");
    assert!(
        !list[0]["last_used_at"].is_null(),
        "its use is recorded: {list}"
    );

    // The key can list its own keys, but not make more.
    app.get(KEYS, key).await.assert_status(200);
    let refused = app.post_json(KEYS, key, &json!({"name": "more"})).await;
    refused.assert_status(403);
    assert_eq!(app.get(KEYS, &jwt).await.total(), 1);

    // Revoked: refused at once, here and on /v1.
    let path = format!("{KEYS}/{}", created["id"].as_str().unwrap());
    app.delete(&path, &jwt).await.assert_status(200);
    let response = app.get("/api/v1/users/me", key).await;
    response.assert_status(401);
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    app.get("/v1/models", key).await.assert_status(401);
    app.delete(&path, &jwt).await.assert_status(404);
    assert_eq!(app.get(KEYS, &jwt).await.total(), 0);
}

#[tokio::test]
async fn bad_key_requests_are_refused() {
    let app = spawn_app().await;
    let jwt = app.token("lena", USER);
    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({"name": 5}),
        json!({"name": "bad time", "expires_at": "tomorrow"}),
        json!({"name": "nul\u{0}"}),
    ] {
        app.post_json(KEYS, &jwt, &body).await.assert_status(422);
    }
    app.call(Method::POST, KEYS, None, Some(&json!({"name": "x"})))
        .await
        .assert_status(401);
    // Unknown, malformed and made-up keys.
    for key in ["cs-", "cs-not-a-key", &format!("cs-{}", "A".repeat(43))] {
        app.get("/api/v1/users/me", key).await.assert_status(401);
    }
    for id in ["nope", "0000000000", "zzzzzzzzzzzzzzzzzzz"] {
        app.delete(&format!("{KEYS}/{id}"), &jwt)
            .await
            .assert_status(404);
    }
    app.get(&format!("{KEYS}?limit=0"), &jwt)
        .await
        .assert_status(422);
}

#[tokio::test]
async fn another_users_key_cannot_be_revoked_and_admins_manage_everyones() {
    let app = spawn_app().await;
    let owner = app.token("mona", USER);
    let other = app.token("nils", USER);
    let admin = app.token("root", ADMIN);
    let created = make_key(&app, &owner, &json!({"name": "mine"})).await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    app.delete(&format!("{KEYS}/{id}"), &other)
        .await
        .assert_status(404);
    app.get("/api/v1/users/me", key).await.assert_status(200);

    // Admin routes: an admin's JWT, never a key (not even an admin's).
    let user_keys = "/api/v1/admin/users/mona/api-keys";
    app.get(user_keys, &other).await.assert_status(403);
    app.get(user_keys, key).await.assert_status(403);
    let admin_key = new_key(&app, &admin).await;
    app.get(user_keys, &admin_key).await.assert_status(403);
    app.get("/api/v1/admin/conversations", &admin_key)
        .await
        .assert_status(403);
    app.get("/api/v1/admin/conversations", &admin)
        .await
        .assert_status(200);

    let listed = app.get(user_keys, &admin).await;
    listed.assert_status(200);
    assert_eq!(listed.total(), 1);
    assert_eq!(listed.json()[0]["id"], id);
    assert!(!listed.text.contains(key));
    app.get("/api/v1/admin/users/nobody/api-keys", &admin)
        .await
        .assert_status(404);
    // A key of one user is not found under another.
    app.delete(&format!("/api/v1/admin/users/nils/api-keys/{id}"), &admin)
        .await
        .assert_status(404);
    app.delete(&format!("{user_keys}/{id}"), &admin)
        .await
        .assert_status(200);
    app.get("/api/v1/users/me", key).await.assert_status(401);
}

#[tokio::test]
async fn an_admins_or_managers_key_has_only_user_rights() {
    let app = spawn_app().await;
    let owner = app.token("olga", USER);
    let conversation = app.new_conversation(&owner).await;
    let theirs = format!("/api/v1/users/olga/conversations/{conversation}");
    let their_messages = format!("/api/v1/conversations/{conversation}/messages");

    for (name, roles) in [("root", ADMIN), ("meg", MANAGER)] {
        let jwt = app.token(name, roles);
        let key = new_key(&app, &jwt).await;
        // The token reaches the staff routes and another user's conversation...
        for path in [
            "/api/v1/users",
            "/api/v1/admin/usage",
            &theirs,
            &their_messages,
        ] {
            app.get(path, &jwt).await.assert_status(200);
        }
        // ...the key it made does not.
        app.get("/api/v1/users", &key).await.assert_status(403);
        app.get("/api/v1/admin/usage", &key)
            .await
            .assert_status(403);
        app.get(&theirs, &key).await.assert_status(403);
        app.get(&their_messages, &key).await.assert_status(404);
        app.patch_json(&theirs, &key, &json!({"title": "taken"}))
            .await
            .assert_status(403);
        // Its own user's data and /v1 it reaches as any user's key does.
        let own = app.new_conversation(&key).await;
        app.get(&format!("/api/v1/users/me/conversations/{own}"), &key)
            .await
            .assert_status(200);
        app.get("/v1/models", &key).await.assert_status(200);
    }
    let title = app.get(&theirs, &owner).await.assert_status(200).json()["title"].clone();
    assert_eq!(title, "chat");
}

#[tokio::test]
async fn a_key_stored_with_an_admins_roles_has_only_user_rights() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let other = app.token("olga", USER);
    let conversation = app.new_conversation(&other).await;
    // A key as earlier versions stored it: with the roles of the admin token that made it.
    let (root, _) = app.state.store.provision_user("root", None).await.unwrap();
    let key = format!("cs-{}", "k".repeat(43));
    let stored = NewApiKey {
        name: "old script".to_owned(),
        prefix: key[..11].to_owned(),
        key_hash: key_hash(&key),
        roles: vec!["admin".to_owned()],
        expires_at: None,
    };
    app.state
        .store
        .create_api_key(root.id, &stored, 100)
        .await
        .unwrap()
        .expect("stored");

    let me = app
        .get("/api/v1/users/me", &key)
        .await
        .assert_status(200)
        .json();
    assert_eq!(me["username"], "root");
    app.get("/v1/models", &key).await.assert_status(200);
    app.get("/api/v1/users", &key).await.assert_status(403);
    let theirs = format!("/api/v1/users/olga/conversations/{conversation}");
    app.get(&theirs, &key).await.assert_status(403);
    app.get(&theirs, &admin).await.assert_status(200);
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let app = spawn_app().await;
    let jwt = app.token("olga", USER);
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let created = make_key(
        &app,
        &jwt,
        &json!({"name": "short", "expires_at": expires.to_rfc3339()}),
    )
    .await;
    let key = created["key"].as_str().unwrap();
    app.get("/api/v1/users/me", key).await.assert_status(200);
    eventually("the key expires", PATIENCE, || async {
        app.get("/api/v1/users/me", key).await.status == 401
    })
    .await;
    assert!(chrono::Utc::now() >= expires);
    app.get("/v1/models", key).await.assert_status(401);
    // Still listed, with its expiry, until revoked.
    assert_eq!(app.get(KEYS, &jwt).await.total(), 1);
    // One made already expired is refused from the start.
    let old = make_key(
        &app,
        &jwt,
        &json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(old["expires_at"], "2001-01-01T00:00:00Z");
    app.get("/api/v1/users/me", old["key"].as_str().unwrap())
        .await
        .assert_status(401);
}

#[tokio::test]
async fn a_deactivated_users_keys_stop_working() {
    let app = spawn_app().await;
    let jwt = app.token("pia", USER);
    let admin = app.token("root", ADMIN);
    let key = new_key(&app, &jwt).await;
    app.get("/api/v1/users/me", &key).await.assert_status(200);
    app.patch_json("/api/v1/users/pia", &admin, &json!({"is_active": false}))
        .await
        .assert_status(200);
    app.get("/api/v1/users/me", &key).await.assert_status(403);
    app.get("/v1/models", &key).await.assert_status(403);
    app.patch_json("/api/v1/users/pia", &admin, &json!({"is_active": true}))
        .await
        .assert_status(200);
    app.get("/api/v1/users/me", &key).await.assert_status(200);
}

#[tokio::test]
async fn a_key_revoked_on_one_instance_is_refused_on_the_other() {
    let Some((a, b)) = two_instances(|s| s.user_cache_ttl = Duration::from_secs(3600)).await else {
        return;
    };
    let jwt = a.token("quin", USER);
    let created = make_key(&a, &jwt, &json!({"name": "shared"})).await;
    let key = created["key"].as_str().unwrap();
    b.get("/api/v1/users/me", key).await.assert_status(200);
    b.get("/v1/models", key).await.assert_status(200);
    let path = format!("{KEYS}/{}", created["id"].as_str().unwrap());
    a.delete(&path, &jwt).await.assert_status(200);
    b.get("/api/v1/users/me", key).await.assert_status(401);
    b.get("/v1/models", key).await.assert_status(401);
}
