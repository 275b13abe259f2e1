//! The salt of the public IDs: generated per database and kept there when `HASHID_SALT` is
//! unset, the old shared default on a database that handed out IDs before, the configured one
//! when set.

use crate::helpers::{spawn_app_with, IdCodec, TestApp, TestOptions, LEGACY_SALT, USER};
use crate::test_database::TestDatabase;

/// Starts an instance on `database`, which outlives it.
async fn instance(database: &TestDatabase) -> TestApp {
    spawn_app_with(TestOptions::new().shared_database(database.url())).await
}

/// Starts an instance on `database` with `HASHID_SALT` set.
async fn instance_with_salt(database: &TestDatabase, salt: &str) -> TestApp {
    let salt = salt.to_owned();
    let options = TestOptions::new()
        .shared_database(database.url())
        .settings(move |settings| settings.hashid_salt = Some(salt));
    spawn_app_with(options).await
}

/// The public IDs of a user and of a conversation of theirs, created on first call.
async fn ids_of(app: &TestApp, username: &str) -> (String, String) {
    let token = app.token(username, USER);
    let user = app.my_id(&token).await;
    let path = "/api/v1/users/me/conversations";
    let listed = app.get(path, &token).await.assert_status(200).json();
    let conversation = match listed.as_array().and_then(|list| list.first()) {
        Some(conversation) => conversation["id"].as_str().expect("an id").to_owned(),
        None => app.new_conversation(&token).await,
    };
    (user, conversation)
}

#[tokio::test]
async fn fresh_databases_give_the_same_row_different_ids() {
    let (first, second) = (TestDatabase::sqlite(), TestDatabase::sqlite());
    let a = instance(&first).await;
    let b = instance(&second).await;
    let ids_a = ids_of(&a, "alice").await;
    let ids_b = ids_of(&b, "alice").await;
    // The same rows (the first user, the first conversation) in both databases.
    assert_eq!(a.state.ids.user.decode(&ids_a.0), Some(1));
    assert_eq!(b.state.ids.user.decode(&ids_b.0), Some(1));
    assert_ne!(ids_a.0, ids_b.0);
    assert_ne!(ids_a.1, ids_b.1);
    let legacy = IdCodec::new(LEGACY_SALT);
    assert_ne!(ids_a.0, legacy.user.encode(1));
    // One database's IDs mean nothing to the other.
    assert_eq!(b.state.ids.user.decode(&ids_a.0), None);
}

/// A restart on the same database keeps every public ID.
async fn restart_keeps_ids(database: TestDatabase) {
    let app = instance(&database).await;
    let before = ids_of(&app, "alice").await;
    app.stop().await;
    let app = instance(&database).await;
    assert_eq!(ids_of(&app, "alice").await, before);
    assert_ne!(before.0, IdCodec::new(LEGACY_SALT).user.encode(1));
}

#[tokio::test]
async fn a_restart_keeps_the_ids_on_sqlite() {
    restart_keeps_ids(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn a_restart_keeps_the_ids_on_postgres() {
    if let Some(database) = TestDatabase::postgres().await {
        restart_keeps_ids(database).await;
    }
}

/// A database that has rows but no kept salt keeps the old default, for the IDs it handed
/// out and for new rows, and keeps it from then on.
async fn rows_without_salt_keep_the_old_default(database: TestDatabase) {
    // As an install from before salts were kept: IDs handed out with the old default, and
    // (once the new migration has run) no salt in the database.
    let app = instance_with_salt(&database, LEGACY_SALT).await;
    let before = ids_of(&app, "alice").await;
    app.stop().await;

    let app = instance(&database).await;
    assert_eq!(ids_of(&app, "alice").await, before);
    let legacy = IdCodec::new(LEGACY_SALT);
    let (bob, _) = ids_of(&app, "bob").await;
    assert_eq!(bob, legacy.user.encode(2));
    app.stop().await;

    let app = instance(&database).await;
    assert_eq!(ids_of(&app, "bob").await.0, bob);
}

#[tokio::test]
async fn a_database_with_rows_and_no_salt_keeps_the_old_default_on_sqlite() {
    rows_without_salt_keep_the_old_default(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn a_database_with_rows_and_no_salt_keeps_the_old_default_on_postgres() {
    if let Some(database) = TestDatabase::postgres().await {
        rows_without_salt_keep_the_old_default(database).await;
    }
}

#[tokio::test]
async fn a_configured_salt_wins_over_the_kept_one() {
    let database = TestDatabase::sqlite();
    let app = instance(&database).await;
    let kept = ids_of(&app, "alice").await;
    app.stop().await;

    let app = instance_with_salt(&database, "a salt of our own").await;
    let configured = ids_of(&app, "alice").await;
    let codec = IdCodec::new("a salt of our own");
    assert_eq!(configured.0, codec.user.encode(1));
    assert_eq!(configured.1, codec.conversation.encode(1));
    assert_ne!(configured, kept);
    app.stop().await;

    // The kept salt is still there for a start without HASHID_SALT.
    let app = instance(&database).await;
    assert_eq!(ids_of(&app, "alice").await, kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_on_postgres_share_one_salt() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let (a, b, c) = tokio::join!(
        instance(&database),
        instance(&database),
        instance(&database)
    );
    for key in [1, 2, 99] {
        let id = a.state.ids.conversation.encode(key);
        assert_eq!(b.state.ids.conversation.encode(key), id);
        assert_eq!(c.state.ids.conversation.encode(key), id);
    }
    let (user, _) = ids_of(&a, "alice").await;
    assert_eq!(ids_of(&b, "alice").await.0, user);
    assert_ne!(user, IdCodec::new(LEGACY_SALT).user.encode(1));
}
