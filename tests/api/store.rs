//! The `Store` contract, checked against every backend through `Arc<dyn Store>`, and the
//! whole server running on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::fake_llm::Behaviour;
use crate::helpers::db::postgres::PostgresStore;
use crate::helpers::db::sqlite::SqliteStore;
use crate::helpers::db::*;
use crate::helpers::{spawn_app_with, Secret, TestOptions};
use crate::test_database::{PgDatabase, TestDatabase};

/// A fresh, empty store on its own database, which goes away with it; `None` when
/// PostgreSQL tests are skipped.
async fn open_store(database: Option<TestDatabase>) -> Option<(Arc<dyn Store>, TestDatabase)> {
    let database = database?;
    let store: Arc<dyn Store> = match &database {
        TestDatabase::Sqlite { url, .. } => {
            Arc::new(SqliteStore::connect(url, "full", 4).await.unwrap())
        }
        TestDatabase::Postgres(pg) => Arc::new(PostgresStore::connect(&pg.url).await.unwrap()),
        TestDatabase::Shared { .. } => unreachable!("the store tests open databases of their own"),
    };
    Some((store, database))
}

/// Runs each named test function once per backend, as `sqlite::name` and `postgres::name`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let database = Some(super::TestDatabase::sqlite());
                    if let Some((store, _database)) = super::open_store(database).await {
                        super::$name(store).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let database = super::TestDatabase::postgres().await;
                    if let Some((store, _database)) = super::open_store(database).await {
                        super::$name(store).await;
                    }
                }
            )*
        }
    };
}

on_every_backend!(
    provisioning_creates_a_user_once,
    concurrent_provisioning_creates_one_user,
    provisioning_skips_an_email_that_is_taken,
    taken_usernames_and_emails_conflict,
    users_are_searched_filtered_and_paged,
    users_are_patched_field_by_field,
    conversations_are_searched_filtered_and_paged,
    owners_see_only_their_conversations,
    anonymous_scope_sees_only_ownerless_conversations,
    ending_sets_ended_at_once_and_reactivating_clears_it,
    a_new_message_makes_its_conversation_the_most_recent,
    messages_are_listed_oldest_first_and_paged,
    a_turn_reads_its_conversation_history_and_tools_at_once,
    stats_aggregate_a_conversations_messages,
    deleting_a_user_deletes_their_conversations_and_messages,
    deleting_a_conversation_deletes_its_messages,
    a_conversation_is_created_with_its_first_message,
    mcp_servers_are_scoped_filtered_and_paged,
    mcp_server_patches_set_and_clear_fields,
    deleting_a_user_deletes_their_mcp_servers,
    usage_is_summed_grouped_and_goes_with_its_user,
    user_limits_are_set_and_cleared,
);

fn new_user(username: &str, email: Option<&str>, full_name: Option<&str>) -> NewUser {
    NewUser {
        username: username.to_owned(),
        email: email.map(str::to_owned),
        full_name: full_name.map(str::to_owned),
    }
}

fn titled(title: &str) -> NewConversation {
    NewConversation {
        title: title.to_owned(),
        ..NewConversation::default()
    }
}

fn page(skip: i64, limit: i64) -> Page {
    Page { skip, limit }
}

fn users(search: Option<&str>, is_active: Option<bool>, page: Page) -> UserFilter {
    UserFilter {
        search: search.map(str::to_owned),
        is_active,
        page,
    }
}

fn conversations(
    status: Option<ConversationStatus>,
    search: Option<&str>,
    page: Page,
) -> ConversationFilter {
    ConversationFilter {
        status,
        search: search.map(str::to_owned),
        page,
    }
}

fn all_messages() -> MessageFilter {
    MessageFilter {
        role: None,
        page: page(0, 100),
    }
}

fn titles(list: &[Conversation]) -> Vec<&str> {
    list.iter().map(|c| c.title.as_str()).collect()
}

fn usernames(list: &[User]) -> Vec<&str> {
    list.iter().map(|u| u.username.as_str()).collect()
}

fn contents(list: &[Message]) -> Vec<&str> {
    list.iter().map(|m| m.content.as_str()).collect()
}

fn history_contents(list: &[HistoryMessage]) -> Vec<&str> {
    list.iter().map(|m| m.content.as_str()).collect()
}

/// Lets the clock move on, so times taken before and after differ.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

async fn provisioning_creates_a_user_once(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let (first, created) = store
        .provision_user("alice", Some("alice@example.com"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(first.username, "alice");
    assert_eq!(first.email.as_deref(), Some("alice@example.com"));
    assert!(first.is_active);
    let (again, created) = store.provision_user("alice", None).await.unwrap();
    assert!(!created);
    assert_eq!(again, first);
    assert_eq!(
        store.user_by_id(first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.user_by_username("alice").await.unwrap(), Some(first));
    assert_eq!(store.user_by_username("nobody").await.unwrap(), None);
}

async fn concurrent_provisioning_creates_one_user(store: Arc<dyn Store>) {
    for round in 0..5 {
        let username = format!("racer{round}");
        let provision = |store: Arc<dyn Store>, username: String| {
            tokio::spawn(async move {
                store
                    .provision_user(&username, Some(&format!("{username}@example.com")))
                    .await
            })
        };
        let a = provision(store.clone(), username.clone());
        let b = provision(store.clone(), username.clone());
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_eq!(a.0.id, b.0.id, "both provisions return the same user");
        assert!(a.1 ^ b.1, "exactly one provision created the user");
    }
    let (_, total) = store
        .list_users(&users(None, None, page(0, 100)))
        .await
        .unwrap();
    assert_eq!(total, 5);
}

async fn provisioning_skips_an_email_that_is_taken(store: Arc<dyn Store>) {
    store
        .create_user(&new_user("owner", Some("shared@example.com"), None))
        .await
        .unwrap();
    // Emails compare without case on both backends.
    let (user, created) = store
        .provision_user("newcomer", Some("Shared@Example.com"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(user.email, None);
}

async fn taken_usernames_and_emails_conflict(store: Arc<dyn Store>) {
    let alice = store
        .create_user(&new_user("alice", Some("alice@example.com"), Some("Alice")))
        .await
        .unwrap();
    let bob = store
        .create_user(&new_user("bob", None, None))
        .await
        .unwrap();
    let conflict = |result: StoreResult<User>| match result {
        Err(StoreError::Conflict(field)) => field,
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert_eq!(
        conflict(store.create_user(&new_user("alice", None, None)).await),
        "username"
    );
    assert_eq!(
        conflict(
            store
                .create_user(&new_user("alice2", Some("ALICE@example.com"), None))
                .await
        ),
        "email"
    );
    let rename = UserPatch {
        username: Some("alice".to_owned()),
        ..UserPatch::default()
    };
    let taken = store.update_user(bob.id, &rename).await.map(|u| u.unwrap());
    assert_eq!(conflict(taken), "username");
    let reemail = UserPatch {
        email: Some("Alice@Example.com".to_owned()),
        ..UserPatch::default()
    };
    let taken = store
        .update_user(bob.id, &reemail)
        .await
        .map(|u| u.unwrap());
    assert_eq!(conflict(taken), "email");
    // Nothing changed.
    assert_eq!(store.user_by_id(alice.id).await.unwrap(), Some(alice));
    assert_eq!(store.user_by_id(bob.id).await.unwrap(), Some(bob));
}

async fn users_are_searched_filtered_and_paged(store: Arc<dyn Store>) {
    for (username, email, name) in [
        ("ann", Some("ann@example.com"), Some("Ann Smith")),
        ("ben", Some("ben@corp.test"), Some("Ben 100% Jones")),
        ("cat_x", None, Some("Cat")),
        ("catx", None, None),
        ("dan", Some("dan@example.com"), None),
    ] {
        store
            .create_user(&new_user(username, email, name))
            .await
            .unwrap();
    }
    let dan = store.user_by_username("dan").await.unwrap().unwrap();
    let deactivate = UserPatch {
        is_active: Some(false),
        ..UserPatch::default()
    };
    store.update_user(dan.id, &deactivate).await.unwrap();

    let list = |search: Option<&'static str>, active: Option<bool>, p: Page| {
        let store = store.clone();
        async move { store.list_users(&users(search, active, p)).await.unwrap() }
    };
    let (all, total) = list(None, None, page(0, 100)).await;
    assert_eq!(usernames(&all), ["ann", "ben", "cat_x", "catx", "dan"]);
    assert_eq!(total, 5);
    // Pages keep the total of the whole match, even past the end.
    let (second, total) = list(None, None, page(2, 2)).await;
    assert_eq!((usernames(&second), total), (vec!["cat_x", "catx"], 5));
    let (past, total) = list(None, None, page(10, 2)).await;
    assert_eq!((past.len(), total), (0, 5));
    // Search covers username, email and full name, ignoring case.
    let (found, total) = list(Some("EXAMPLE"), None, page(0, 100)).await;
    assert_eq!((usernames(&found), total), (vec!["ann", "dan"], 2));
    let (found, _) = list(Some("smith"), None, page(0, 100)).await;
    assert_eq!(usernames(&found), ["ann"]);
    // Wildcards in the search are literal.
    let (found, _) = list(Some("_"), None, page(0, 100)).await;
    assert_eq!(usernames(&found), ["cat_x"]);
    let (found, _) = list(Some("%"), None, page(0, 100)).await;
    assert_eq!(usernames(&found), ["ben"]);
    let (found, total) = list(Some("zzz"), None, page(0, 100)).await;
    assert_eq!((found.len(), total), (0, 0));
    // The active flag filters, and combines with the search.
    let (inactive, total) = list(None, Some(false), page(0, 100)).await;
    assert_eq!((usernames(&inactive), total), (vec!["dan"], 1));
    let (active, total) = list(Some("example"), Some(true), page(0, 100)).await;
    assert_eq!((usernames(&active), total), (vec!["ann"], 1));
}

async fn users_are_patched_field_by_field(store: Arc<dyn Store>) {
    let user = store
        .create_user(&new_user("eve", Some("eve@example.com"), Some("Eve")))
        .await
        .unwrap();
    tick().await;
    let patch = UserPatch {
        full_name: Some("Eve Adams".to_owned()),
        ..UserPatch::default()
    };
    let patched = store.update_user(user.id, &patch).await.unwrap().unwrap();
    assert_eq!(patched.full_name.as_deref(), Some("Eve Adams"));
    assert_eq!(patched.username, "eve");
    assert_eq!(patched.email.as_deref(), Some("eve@example.com"));
    assert!(patched.is_active);
    assert_eq!(patched.created_at, user.created_at);
    assert!(patched.updated_at > user.updated_at);
    assert_eq!(
        store.update_user(user.id + 100, &patch).await.unwrap(),
        None
    );
    assert!(store.delete_user(user.id).await.unwrap());
    assert!(!store.delete_user(user.id).await.unwrap());
}

async fn conversations_are_searched_filtered_and_paged(store: Arc<dyn Store>) {
    let owner = store
        .create_user(&new_user("olga", None, None))
        .await
        .unwrap();
    let metadata = json!({"topic": "rust", "tags": ["a", "b"], "depth": 2});
    let first = store
        .create_conversation(
            Some(owner.id),
            &NewConversation {
                title: "Rust lifetimes".to_owned(),
                system_message: Some("Be brief.".to_owned()),
                model: Some("gpt-test".to_owned()),
                context_metadata: Some(metadata.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(first.user_id, Some(owner.id));
    assert_eq!(first.status, ConversationStatus::Active);
    assert_eq!(first.context_metadata, Some(metadata));
    assert_eq!(first.system_message.as_deref(), Some("Be brief."));
    assert_eq!(first.model.as_deref(), Some("gpt-test"));
    assert_eq!(first.ended_at, None);
    assert_eq!(
        store
            .conversation(Scope::Owner(owner.id), first.id)
            .await
            .unwrap(),
        Some(first.clone())
    );
    for title in ["Cooking 100%", "rust macros", "Gardening", "under_score"] {
        tick().await;
        store
            .create_conversation(Some(owner.id), &titled(title))
            .await
            .unwrap();
    }
    let gardening = store
        .list_conversations(
            Scope::Owner(owner.id),
            &conversations(None, Some("garden"), page(0, 10)),
        )
        .await
        .unwrap()
        .0
        .remove(0);
    let archive = ConversationPatch {
        status: Some(ConversationStatus::Archived),
        ..ConversationPatch::default()
    };
    store
        .update_conversation(Scope::Owner(owner.id), gardening.id, &archive)
        .await
        .unwrap()
        .unwrap();

    let list = |status, search: Option<&'static str>, p: Page| {
        let store = store.clone();
        async move {
            store
                .list_conversations(Scope::Owner(owner.id), &conversations(status, search, p))
                .await
                .unwrap()
        }
    };
    // Most recently active first: the archived one was just changed.
    let (all, total) = list(None, None, page(0, 10)).await;
    assert_eq!(
        titles(&all),
        [
            "Gardening",
            "under_score",
            "rust macros",
            "Cooking 100%",
            "Rust lifetimes"
        ]
    );
    assert_eq!(total, 5);
    let (second, total) = list(None, None, page(2, 2)).await;
    assert_eq!(
        (titles(&second), total),
        (vec!["rust macros", "Cooking 100%"], 5)
    );
    let (past, total) = list(None, None, page(5, 2)).await;
    assert_eq!((past.len(), total), (0, 5));
    let (rust, total) = list(None, Some("RUST"), page(0, 10)).await;
    assert_eq!(
        (titles(&rust), total),
        (vec!["rust macros", "Rust lifetimes"], 2)
    );
    let (percent, _) = list(None, Some("%"), page(0, 10)).await;
    assert_eq!(titles(&percent), ["Cooking 100%"]);
    let (underscore, _) = list(None, Some("_"), page(0, 10)).await;
    assert_eq!(titles(&underscore), ["under_score"]);
    let (archived, total) = list(Some(ConversationStatus::Archived), None, page(0, 10)).await;
    assert_eq!((titles(&archived), total), (vec!["Gardening"], 1));
    let (active_rust, total) =
        list(Some(ConversationStatus::Active), Some("rust"), page(1, 1)).await;
    assert_eq!((titles(&active_rust), total), (vec!["Rust lifetimes"], 2));
}

async fn owners_see_only_their_conversations(store: Arc<dyn Store>) {
    let ann = store
        .create_user(&new_user("ann", None, None))
        .await
        .unwrap();
    let bob = store
        .create_user(&new_user("bob", None, None))
        .await
        .unwrap();
    let theirs = store
        .create_conversation(Some(ann.id), &titled("ann's"))
        .await
        .unwrap();
    store
        .add_message(
            Scope::Owner(ann.id),
            theirs.id,
            &NewMessage::text(MessageRole::User, "hello"),
        )
        .await
        .unwrap()
        .unwrap();
    let before = store
        .conversation(Scope::Anyone, theirs.id)
        .await
        .unwrap()
        .unwrap();
    let bob_scope = Scope::Owner(bob.id);

    // Reads out of scope find nothing.
    assert_eq!(
        store.conversation(bob_scope, theirs.id).await.unwrap(),
        None
    );
    let (listed, total) = store
        .list_conversations(bob_scope, &conversations(None, None, page(0, 10)))
        .await
        .unwrap();
    assert_eq!((listed.len(), total), (0, 0));
    assert_eq!(
        store
            .list_messages(bob_scope, theirs.id, &all_messages())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.turn_context(bob_scope, theirs.id, 10).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .conversation_stats(bob_scope, theirs.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .conversation(Scope::Anonymous, theirs.id)
            .await
            .unwrap(),
        None
    );

    // Writes out of scope change nothing.
    let patch = ConversationPatch {
        title: Some("hijacked".to_owned()),
        status: Some(ConversationStatus::Ended),
        context_metadata: Some(json!({"x": 1})),
    };
    assert_eq!(
        store
            .update_conversation(bob_scope, theirs.id, &patch)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .add_message(
                bob_scope,
                theirs.id,
                &NewMessage::text(MessageRole::User, "intruder")
            )
            .await
            .unwrap(),
        None
    );
    assert!(!store
        .delete_conversation(bob_scope, theirs.id)
        .await
        .unwrap());
    assert_eq!(
        store.conversation(Scope::Anyone, theirs.id).await.unwrap(),
        Some(before)
    );
    let (messages, total) = store
        .list_messages(Scope::Owner(ann.id), theirs.id, &all_messages())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((contents(&messages), total), (vec!["hello"], 1));

    // The owner and `Anyone` see it.
    let (listed, total) = store
        .list_conversations(Scope::Anyone, &conversations(None, None, page(0, 10)))
        .await
        .unwrap();
    assert_eq!((titles(&listed), total), (vec!["ann's"], 1));
    assert!(store
        .delete_conversation(Scope::Owner(ann.id), theirs.id)
        .await
        .unwrap());
}

async fn anonymous_scope_sees_only_ownerless_conversations(store: Arc<dyn Store>) {
    let ann = store
        .create_user(&new_user("ann", None, None))
        .await
        .unwrap();
    let owned = store
        .create_conversation(Some(ann.id), &titled("owned"))
        .await
        .unwrap();
    tick().await;
    let anonymous = store
        .create_conversation(None, &titled("anonymous"))
        .await
        .unwrap();
    assert_eq!(anonymous.user_id, None);

    let (listed, total) = store
        .list_conversations(Scope::Anonymous, &conversations(None, None, page(0, 10)))
        .await
        .unwrap();
    assert_eq!((titles(&listed), total), (vec!["anonymous"], 1));
    assert_eq!(
        store
            .conversation(Scope::Anonymous, owned.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .conversation(Scope::Owner(ann.id), anonymous.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .add_message(
                Scope::Anonymous,
                owned.id,
                &NewMessage::text(MessageRole::User, "x")
            )
            .await
            .unwrap(),
        None
    );
    let message = store
        .add_message(
            Scope::Anonymous,
            anonymous.id,
            &NewMessage::text(MessageRole::User, "hi"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.conversation_id, anonymous.id);
    let (all, total) = store
        .list_conversations(Scope::Anyone, &conversations(None, None, page(0, 10)))
        .await
        .unwrap();
    assert_eq!((titles(&all), total), (vec!["anonymous", "owned"], 2));
    assert!(!store
        .delete_conversation(Scope::Anonymous, owned.id)
        .await
        .unwrap());
    assert!(store
        .delete_conversation(Scope::Anonymous, anonymous.id)
        .await
        .unwrap());
}

async fn ending_sets_ended_at_once_and_reactivating_clears_it(store: Arc<dyn Store>) {
    let user = store
        .create_user(&new_user("ivy", None, None))
        .await
        .unwrap();
    let scope = Scope::Owner(user.id);
    let conversation = store
        .create_conversation(Some(user.id), &titled("lifecycle"))
        .await
        .unwrap();
    let set = |status| ConversationPatch {
        status: Some(status),
        ..ConversationPatch::default()
    };
    tick().await;
    let ended = store
        .update_conversation(scope, conversation.id, &set(ConversationStatus::Ended))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, ConversationStatus::Ended);
    let ended_at = ended.ended_at.expect("ending sets ended_at");
    assert!(ended.updated_at > conversation.updated_at);

    // Ending again, or changing only the title, keeps the first end time.
    tick().await;
    let again = store
        .update_conversation(scope, conversation.id, &set(ConversationStatus::Ended))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.ended_at, Some(ended_at));
    let retitle = ConversationPatch {
        title: Some("renamed".to_owned()),
        ..ConversationPatch::default()
    };
    let renamed = store
        .update_conversation(scope, conversation.id, &retitle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.title, "renamed");
    assert_eq!(renamed.status, ConversationStatus::Ended);
    assert_eq!(renamed.ended_at, Some(ended_at));

    // Reactivating clears it; metadata is replaced only when given.
    let reactivate = ConversationPatch {
        status: Some(ConversationStatus::Active),
        context_metadata: Some(json!({"resumed": true})),
        ..ConversationPatch::default()
    };
    let active = store
        .update_conversation(scope, conversation.id, &reactivate)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.status, ConversationStatus::Active);
    assert_eq!(active.ended_at, None);
    assert_eq!(active.title, "renamed");
    assert_eq!(active.context_metadata, Some(json!({"resumed": true})));
    let archived = store
        .update_conversation(scope, conversation.id, &set(ConversationStatus::Archived))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(archived.ended_at, None);
    assert_eq!(archived.context_metadata, Some(json!({"resumed": true})));
    assert_eq!(
        store
            .update_conversation(scope, conversation.id + 100, &retitle)
            .await
            .unwrap(),
        None
    );
}

async fn a_new_message_makes_its_conversation_the_most_recent(store: Arc<dyn Store>) {
    let user = store
        .create_user(&new_user("max", None, None))
        .await
        .unwrap();
    let scope = Scope::Owner(user.id);
    let mut created = Vec::new();
    for title in ["old", "middle", "new"] {
        tick().await;
        created.push(
            store
                .create_conversation(Some(user.id), &titled(title))
                .await
                .unwrap(),
        );
    }
    let list = || {
        let store = store.clone();
        async move {
            store
                .list_conversations(scope, &conversations(None, None, page(0, 10)))
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(titles(&list().await), ["new", "middle", "old"]);
    tick().await;
    let message = store
        .add_message(
            scope,
            created[0].id,
            &NewMessage::text(MessageRole::User, "bump"),
        )
        .await
        .unwrap()
        .unwrap();
    let listed = list().await;
    assert_eq!(titles(&listed), ["old", "new", "middle"]);
    assert_eq!(listed[0].updated_at, message.timestamp);
    assert_eq!(listed[0].created_at, created[0].created_at);
}

async fn messages_are_listed_oldest_first_and_paged(store: Arc<dyn Store>) {
    let user = store
        .create_user(&new_user("nia", None, None))
        .await
        .unwrap();
    let scope = Scope::Owner(user.id);
    let conversation = store
        .create_conversation(Some(user.id), &titled("talk"))
        .await
        .unwrap();
    let reply = NewMessage {
        role: MessageRole::Assistant,
        content: "a1".to_owned(),
        model: Some("gpt-test".to_owned()),
        tokens_used: Some(42),
        response_time: Some(123.5),
        message_metadata: Some(json!({"finish_reason": "stop"})),
    };
    let mut added = Vec::new();
    for new in [
        NewMessage::text(MessageRole::System, "s1"),
        NewMessage::text(MessageRole::User, "u1"),
        reply,
        NewMessage::text(MessageRole::User, "u2"),
        NewMessage::text(MessageRole::Assistant, "a2"),
    ] {
        added.push(
            store
                .add_message(scope, conversation.id, &new)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let stored = &added[2];
    assert_eq!(stored.role, MessageRole::Assistant);
    assert_eq!(stored.conversation_id, conversation.id);
    assert_eq!(stored.model.as_deref(), Some("gpt-test"));
    assert_eq!(stored.tokens_used, Some(42));
    assert_eq!(stored.response_time, Some(123.5));
    assert_eq!(
        stored.message_metadata,
        Some(json!({"finish_reason": "stop"}))
    );

    let list = |role, p: Page| {
        let store = store.clone();
        async move {
            store
                .list_messages(scope, conversation.id, &MessageFilter { role, page: p })
                .await
                .unwrap()
                .unwrap()
        }
    };
    let (all, total) = list(None, page(0, 100)).await;
    assert_eq!(all, added);
    assert_eq!(total, 5);
    let (middle, total) = list(None, page(1, 2)).await;
    assert_eq!((contents(&middle), total), (vec!["u1", "a1"], 5));
    let (past, total) = list(None, page(9, 2)).await;
    assert_eq!((past.len(), total), (0, 5));
    let (users, total) = list(Some(MessageRole::User), page(0, 100)).await;
    assert_eq!((contents(&users), total), (vec!["u1", "u2"], 2));
    let (second_reply, total) = list(Some(MessageRole::Assistant), page(1, 1)).await;
    assert_eq!((contents(&second_reply), total), (vec!["a2"], 2));
    assert_eq!(
        store
            .list_messages(scope, conversation.id + 100, &all_messages())
            .await
            .unwrap(),
        None
    );
    // An empty conversation in scope lists nothing, rather than being missing.
    let empty = store
        .create_conversation(Some(user.id), &titled("empty"))
        .await
        .unwrap();
    assert_eq!(
        store
            .list_messages(scope, empty.id, &all_messages())
            .await
            .unwrap(),
        Some((vec![], 0))
    );
}

async fn a_turn_reads_its_conversation_history_and_tools_at_once(store: Arc<dyn Store>) {
    use MessageRole::{Assistant, User};
    let user = store
        .create_user(&new_user("oli", None, None))
        .await
        .unwrap();
    let scope = Scope::Owner(user.id);
    let conversation = store
        .create_conversation(Some(user.id), &titled("history"))
        .await
        .unwrap();
    let other = store
        .create_conversation(Some(user.id), &titled("other"))
        .await
        .unwrap();
    let history = |scope, limit| {
        let store = store.clone();
        async move {
            store
                .turn_context(scope, conversation.id, limit)
                .await
                .unwrap()
                .expect("the conversation is in scope")
        }
    };
    let empty = history(scope, 10).await;
    assert_eq!(empty.conversation, conversation);
    assert_eq!(empty.history, []);
    assert!(!empty.has_tools);

    let mut ids = Vec::new();
    for i in 1..=5 {
        let role = if i % 2 == 1 { User } else { Assistant };
        let new = NewMessage::text(role, format!("m{i}"));
        let stored = store
            .add_message(scope, conversation.id, &new)
            .await
            .unwrap()
            .unwrap();
        ids.push(stored.id);
        let noise = NewMessage::text(User, format!("other{i}"));
        store
            .add_message(scope, other.id, &noise)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        history_contents(&history(scope, 3).await.history),
        ["m3", "m4", "m5"]
    );
    let everything = history(Scope::Anyone, 50).await.history;
    assert_eq!(
        history_contents(&everything),
        ["m1", "m2", "m3", "m4", "m5"]
    );
    let roles: Vec<MessageRole> = everything.iter().map(|m| m.role).collect();
    assert_eq!(roles, [User, Assistant, User, Assistant, User]);
    let keys: Vec<i64> = everything.iter().map(|m| m.id).collect();
    assert_eq!(keys, ids);
    // Text comes back as stored, whatever it holds.
    let tricky = "a \"quote\", a \\ backslash,\na new line, \u{1F600} and [\"json\"]";
    let stored = store
        .add_message(scope, conversation.id, &NewMessage::text(Assistant, tricky))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        history(scope, 1).await.history,
        [HistoryMessage {
            id: stored.id,
            role: Assistant,
            content: tricky.to_owned()
        }]
    );

    // Tools: only an active server of the owner's counts.
    let stranger = store
        .create_user(&new_user("stranger", None, None))
        .await
        .unwrap();
    store
        .create_mcp_server(stranger.id, &mcp_server("theirs", true, None))
        .await
        .unwrap();
    store
        .create_mcp_server(user.id, &mcp_server("off", false, None))
        .await
        .unwrap();
    assert!(!history(scope, 1).await.has_tools);
    store
        .create_mcp_server(user.id, &mcp_server("on", true, None))
        .await
        .unwrap();
    assert!(history(scope, 1).await.has_tools);
}

async fn stats_aggregate_a_conversations_messages(store: Arc<dyn Store>) {
    let user = store
        .create_user(&new_user("pia", None, None))
        .await
        .unwrap();
    let scope = Scope::Owner(user.id);
    let conversation = store
        .create_conversation(Some(user.id), &titled("stats"))
        .await
        .unwrap();
    let empty = store
        .conversation_stats(scope, conversation.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        empty,
        ConversationStats {
            total_messages: 0,
            user_messages: 0,
            assistant_messages: 0,
            system_messages: 0,
            total_tokens: 0,
            average_response_time: None,
            first_message_at: None,
            last_message_at: None,
        }
    );
    let answer = |tokens, time| NewMessage {
        tokens_used: Some(tokens),
        response_time: Some(time),
        ..NewMessage::text(MessageRole::Assistant, "answer")
    };
    let mut added = Vec::new();
    for new in [
        NewMessage::text(MessageRole::System, "rules"),
        NewMessage::text(MessageRole::User, "q1"),
        answer(10, 100.0),
        NewMessage::text(MessageRole::User, "q2"),
        answer(30, 300.0),
    ] {
        added.push(
            store
                .add_message(scope, conversation.id, &new)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let stats = store
        .conversation_stats(scope, conversation.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stats,
        ConversationStats {
            total_messages: 5,
            user_messages: 2,
            assistant_messages: 2,
            system_messages: 1,
            total_tokens: 40,
            average_response_time: Some(200.0),
            first_message_at: Some(added[0].timestamp),
            last_message_at: Some(added[4].timestamp),
        }
    );
    assert_eq!(
        store
            .conversation_stats(scope, conversation.id + 100)
            .await
            .unwrap(),
        None
    );
}

async fn deleting_a_user_deletes_their_conversations_and_messages(store: Arc<dyn Store>) {
    let doomed = store
        .create_user(&new_user("quinn", None, None))
        .await
        .unwrap();
    let kept = store
        .create_user(&new_user("rita", None, None))
        .await
        .unwrap();
    let theirs = store
        .create_conversation(Some(doomed.id), &titled("theirs"))
        .await
        .unwrap();
    let mine = store
        .create_conversation(Some(kept.id), &titled("mine"))
        .await
        .unwrap();
    for (owner, conversation) in [(doomed.id, theirs.id), (kept.id, mine.id)] {
        store
            .add_message(
                Scope::Owner(owner),
                conversation,
                &NewMessage::text(MessageRole::User, "hi"),
            )
            .await
            .unwrap()
            .unwrap();
    }
    assert!(store.delete_user(doomed.id).await.unwrap());
    assert_eq!(store.user_by_id(doomed.id).await.unwrap(), None);
    assert_eq!(
        store.conversation(Scope::Anyone, theirs.id).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .turn_context(Scope::Anyone, theirs.id, 10)
            .await
            .unwrap(),
        None
    );
    let (left, total) = store
        .list_conversations(Scope::Anyone, &conversations(None, None, page(0, 10)))
        .await
        .unwrap();
    assert_eq!((titles(&left), total), (vec!["mine"], 1));
    let (messages, _) = store
        .list_messages(Scope::Owner(kept.id), mine.id, &all_messages())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&messages), ["hi"]);
}

async fn deleting_a_conversation_deletes_its_messages(store: Arc<dyn Store>) {
    let user = store
        .create_user(&new_user("sam", None, None))
        .await
        .unwrap();
    let scope = Scope::Owner(user.id);
    let conversation = store
        .create_conversation(Some(user.id), &titled("short"))
        .await
        .unwrap();
    store
        .add_message(
            scope,
            conversation.id,
            &NewMessage::text(MessageRole::User, "bye"),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .delete_conversation(scope, conversation.id)
        .await
        .unwrap());
    assert_eq!(
        store
            .turn_context(Scope::Anyone, conversation.id, 10)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .conversation_stats(Scope::Anyone, conversation.id)
            .await
            .unwrap(),
        None
    );
    assert!(store.user_by_id(user.id).await.unwrap().is_some());
}

async fn a_conversation_is_created_with_its_first_message(store: Arc<dyn Store>) {
    let user = store
        .create_user(&new_user("tess", None, None))
        .await
        .unwrap();
    let scope = Scope::Owner(user.id);
    let new = NewConversation {
        title: "briefed".to_owned(),
        system_message: Some("Be brief.".to_owned()),
        ..NewConversation::default()
    };
    let first = NewMessage::text(MessageRole::System, "Be brief.");
    let (conversation, message) = store
        .create_conversation_with_message(Some(user.id), &new, &first)
        .await
        .unwrap();
    assert_eq!(conversation.user_id, Some(user.id));
    assert_eq!(conversation.system_message.as_deref(), Some("Be brief."));
    assert_eq!(message.conversation_id, conversation.id);
    assert_eq!(message.role, MessageRole::System);
    // One time for both: the message's activity leaves the conversation as answered.
    assert_eq!(message.timestamp, conversation.created_at);
    assert_eq!(
        store.conversation(scope, conversation.id).await.unwrap(),
        Some(conversation.clone())
    );
    let (messages, total) = store
        .list_messages(scope, conversation.id, &all_messages())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((messages, total), (vec![message], 1));

    // Both or neither: a message the database refuses (PostgreSQL stores no NUL in text)
    // takes its conversation with it.
    let refused = NewMessage::text(MessageRole::System, "nul \0 byte");
    let outcome = store
        .create_conversation_with_message(Some(user.id), &titled("second"), &refused)
        .await;
    let (listed, total) = store
        .list_conversations(scope, &conversations(None, None, page(0, 10)))
        .await
        .unwrap();
    match outcome {
        Ok((second, message)) => {
            assert_eq!(total, 2);
            assert_eq!(message.conversation_id, second.id);
        }
        Err(_) => assert_eq!((titles(&listed), total), (vec!["briefed"], 1)),
    }
}

/// Both or neither on SQLite too, where the writes that queue together share one transaction:
/// a first message the database refuses (a trigger's ABORT, as a constraint violation does)
/// takes its conversation with it, and the writes beside it are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_neither_row_of_a_conversation_whose_first_message_is_refused() {
    let (store, database) = open_store(Some(TestDatabase::sqlite())).await.unwrap();
    let mut schema = sqlx::SqliteConnection::connect(database.url())
        .await
        .unwrap();
    schema
        .execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content = 'refused' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .await
        .unwrap();
    schema.close().await.unwrap();
    let user = store
        .create_user(&new_user("ria", None, None))
        .await
        .unwrap();
    let (refused_title, refused) = (
        titled("refused"),
        NewMessage::text(MessageRole::System, "refused"),
    );
    let kept = NewMessage::text(MessageRole::System, "kept");

    let (outcome, beside) = tokio::join!(
        store.create_conversation_with_message(Some(user.id), &refused_title, &refused),
        futures::future::join_all((0..8).map(|i| {
            let store = store.clone();
            let kept = kept.clone();
            async move {
                store
                    .create_conversation_with_message(
                        Some(user.id),
                        &titled(&format!("kept {i}")),
                        &kept,
                    )
                    .await
            }
        })),
    );

    assert!(outcome.is_err());
    assert!(beside.iter().all(Result::is_ok));
    let (listed, total) = store
        .list_conversations(Scope::Anyone, &conversations(None, None, page(0, 100)))
        .await
        .unwrap();
    assert_eq!(total, 8);
    assert!(titles(&listed)
        .iter()
        .all(|title| title.starts_with("kept")));
    for conversation in &listed {
        let (messages, _) = store
            .list_messages(Scope::Anyone, conversation.id, &all_messages())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(messages.len(), 1);
    }
}

fn mcp_server(name: &str, is_active: bool, api_key: Option<&str>) -> NewMcpServer {
    NewMcpServer {
        name: name.to_owned(),
        description: Some(format!("{name} tools")),
        server_url: format!("https://{name}.example.com/mcp"),
        is_active,
        config: Some(json!({ "server": name })),
        api_key: api_key.map(Secret::new),
    }
}

fn mcp_servers(active_only: bool, page: Page) -> McpServerFilter {
    McpServerFilter { active_only, page }
}

fn server_names(list: &[McpServer]) -> Vec<&str> {
    list.iter().map(|s| s.name.as_str()).collect()
}

/// The active servers of `owner` with their keys, as names and key values.
async fn keys_of(store: &Arc<dyn Store>, owner: i64) -> Vec<(String, Option<String>)> {
    store
        .active_mcp_servers_with_keys(owner)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.server.name, s.api_key.map(|k| k.expose().to_owned())))
        .collect()
}

async fn mcp_servers_are_scoped_filtered_and_paged(store: Arc<dyn Store>) {
    let ann = store
        .create_user(&new_user("ann", None, None))
        .await
        .unwrap();
    let ben = store
        .create_user(&new_user("ben", None, None))
        .await
        .unwrap();
    let a1 = store
        .create_mcp_server(ann.id, &mcp_server("a1", true, Some("key-a1")))
        .await
        .unwrap();
    let a2 = store
        .create_mcp_server(ann.id, &mcp_server("a2", false, Some("key-a2")))
        .await
        .unwrap();
    store
        .create_mcp_server(ann.id, &mcp_server("a3", true, None))
        .await
        .unwrap();
    store
        .create_mcp_server(ben.id, &mcp_server("b1", true, Some("key-b1")))
        .await
        .unwrap();
    assert_eq!(a1.user_id, ann.id);
    assert_eq!(a1.name, "a1");
    assert_eq!(a1.description.as_deref(), Some("a1 tools"));
    assert_eq!(a1.server_url, "https://a1.example.com/mcp");
    assert!(a1.is_active && !a2.is_active);
    assert_eq!(a1.config, Some(json!({ "server": "a1" })));
    assert_eq!(a1.created_at, a1.updated_at);

    // Reads within the scope.
    let mine = Scope::Owner(ann.id);
    assert_eq!(
        store.mcp_server(mine, a1.id).await.unwrap(),
        Some(a1.clone())
    );
    assert_eq!(
        store.mcp_server(Scope::Anyone, a1.id).await.unwrap(),
        Some(a1.clone())
    );
    for scope in [Scope::Owner(ben.id), Scope::Anonymous] {
        assert_eq!(store.mcp_server(scope, a1.id).await.unwrap(), None);
    }

    // Lists: oldest first, filtered, paged, with the total.
    let everything = page(0, 10);
    let (list, total) = store
        .list_mcp_servers(mine, &mcp_servers(false, everything))
        .await
        .unwrap();
    assert_eq!((server_names(&list), total), (vec!["a1", "a2", "a3"], 3));
    let (list, total) = store
        .list_mcp_servers(mine, &mcp_servers(true, everything))
        .await
        .unwrap();
    assert_eq!((server_names(&list), total), (vec!["a1", "a3"], 2));
    let (list, total) = store
        .list_mcp_servers(mine, &mcp_servers(false, page(1, 1)))
        .await
        .unwrap();
    assert_eq!((server_names(&list), total), (vec!["a2"], 3));
    let (list, total) = store
        .list_mcp_servers(mine, &mcp_servers(false, page(10, 1)))
        .await
        .unwrap();
    assert_eq!((list.len(), total), (0, 3));
    let (list, total) = store
        .list_mcp_servers(Scope::Anyone, &mcp_servers(true, everything))
        .await
        .unwrap();
    assert_eq!((server_names(&list), total), (vec!["a1", "a3", "b1"], 3));
    let (_, total) = store
        .list_mcp_servers(Scope::Anonymous, &mcp_servers(false, everything))
        .await
        .unwrap();
    assert_eq!(total, 0);

    // The one read of the keys: the owner's active servers.
    assert_eq!(
        keys_of(&store, ann.id).await,
        [
            ("a1".to_owned(), Some("key-a1".to_owned())),
            ("a3".to_owned(), None)
        ]
    );
    assert_eq!(
        keys_of(&store, ben.id).await,
        [("b1".to_owned(), Some("key-b1".to_owned()))]
    );

    // Changes and deletions out of scope touch nothing.
    let rename = McpServerPatch {
        name: Some("taken".to_owned()),
        ..McpServerPatch::default()
    };
    let theirs = Scope::Owner(ben.id);
    assert_eq!(
        store
            .update_mcp_server(theirs, a1.id, &rename)
            .await
            .unwrap(),
        None
    );
    assert!(!store.delete_mcp_server(theirs, a1.id).await.unwrap());
    assert_eq!(
        store.mcp_server(mine, a1.id).await.unwrap(),
        Some(a1.clone())
    );
    assert!(store.delete_mcp_server(mine, a2.id).await.unwrap());
    assert!(!store.delete_mcp_server(mine, a2.id).await.unwrap());
    assert!(store.delete_mcp_server(Scope::Anyone, a1.id).await.unwrap());
    let (list, _) = store
        .list_mcp_servers(mine, &mcp_servers(false, everything))
        .await
        .unwrap();
    assert_eq!(server_names(&list), ["a3"]);
}

async fn mcp_server_patches_set_and_clear_fields(store: Arc<dyn Store>) {
    let user = store
        .create_user(&new_user("cleo", None, None))
        .await
        .unwrap();
    let scope = Scope::Owner(user.id);
    let created = store
        .create_mcp_server(user.id, &mcp_server("clock", true, Some("old-key")))
        .await
        .unwrap();
    tick().await;

    let patch = McpServerPatch {
        name: Some("clock 2".to_owned()),
        server_url: Some("http://clock.internal:9000/rpc".to_owned()),
        ..McpServerPatch::default()
    };
    let renamed = store
        .update_mcp_server(scope, created.id, &patch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.name, "clock 2");
    assert_eq!(renamed.server_url, "http://clock.internal:9000/rpc");
    assert_eq!(renamed.description, created.description);
    assert_eq!(renamed.config, created.config);
    assert_eq!(renamed.created_at, created.created_at);
    assert!(renamed.updated_at > created.updated_at);
    let kept = vec![("clock 2".to_owned(), Some("old-key".to_owned()))];
    assert_eq!(keys_of(&store, user.id).await, kept);

    let clear = McpServerPatch {
        description: Some(None),
        config: Some(None),
        api_key: Some(None),
        ..McpServerPatch::default()
    };
    let cleared = store
        .update_mcp_server(scope, created.id, &clear)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((cleared.description, cleared.config), (None, None));
    assert_eq!(cleared.name, "clock 2");
    assert_eq!(
        keys_of(&store, user.id).await,
        [("clock 2".to_owned(), None)]
    );

    let set = McpServerPatch {
        description: Some(Some("time".to_owned())),
        config: Some(Some(json!({ "zone": "UTC" }))),
        api_key: Some(Some(Secret::new("new-key"))),
        is_active: Some(false),
        ..McpServerPatch::default()
    };
    let off = store
        .update_mcp_server(scope, created.id, &set)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(off.description.as_deref(), Some("time"));
    assert_eq!(off.config, Some(json!({ "zone": "UTC" })));
    assert!(!off.is_active);
    assert!(keys_of(&store, user.id).await.is_empty());

    let on = McpServerPatch {
        is_active: Some(true),
        ..McpServerPatch::default()
    };
    store
        .update_mcp_server(scope, created.id, &on)
        .await
        .unwrap()
        .unwrap();
    let renewed = vec![("clock 2".to_owned(), Some("new-key".to_owned()))];
    assert_eq!(keys_of(&store, user.id).await, renewed);

    // An empty patch changes only the time.
    let same = store
        .update_mcp_server(scope, created.id, &McpServerPatch::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((same.name.as_str(), same.is_active), ("clock 2", true));
    assert_eq!(
        store.update_mcp_server(scope, 999_999, &on).await.unwrap(),
        None
    );
}

async fn deleting_a_user_deletes_their_mcp_servers(store: Arc<dyn Store>) {
    let doomed = store
        .create_user(&new_user("dora", None, None))
        .await
        .unwrap();
    let kept = store
        .create_user(&new_user("eli", None, None))
        .await
        .unwrap();
    let theirs = store
        .create_mcp_server(doomed.id, &mcp_server("theirs", true, Some("k")))
        .await
        .unwrap();
    store
        .create_mcp_server(kept.id, &mcp_server("mine", true, None))
        .await
        .unwrap();
    assert!(store.delete_user(doomed.id).await.unwrap());
    assert_eq!(
        store.mcp_server(Scope::Anyone, theirs.id).await.unwrap(),
        None
    );
    assert!(keys_of(&store, doomed.id).await.is_empty());
    let (left, total) = store
        .list_mcp_servers(Scope::Anyone, &mcp_servers(false, page(0, 10)))
        .await
        .unwrap();
    assert_eq!((server_names(&left), total), (vec!["mine"], 1));
}

/// The whole service on PostgreSQL: REST writes, an LLM reply and reads round-trip.
#[tokio::test]
async fn the_server_runs_on_postgres() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let app = spawn_app_with(TestOptions::new().fake_llm().database(database)).await;
    let token = app.token("pg-user", &["user"]);
    let conversation = app.new_conversation(&token).await;

    let posted = app
        .add_message(
            &token,
            &conversation,
            &json!({"role": "user", "content": "stored on PostgreSQL",
                "message_metadata": {"source": "test"}}),
        )
        .await;
    assert_eq!(posted["content"], "stored on PostgreSQL");

    app.llm().script(Behaviour::reply("Hello from the model."));
    app.chat(&token, &conversation, "and a question")
        .await
        .assert_status(200);

    let messages = app.messages(&token, &conversation).await;
    let texts: Vec<&str> = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "stored on PostgreSQL",
            "and a question",
            "Hello from the model."
        ]
    );
    assert_eq!(messages[0]["id"], posted["id"]);
    assert_eq!(messages[0]["message_metadata"], json!({"source": "test"}));

    let response = app.get("/api/v1/users/me/conversations", &token).await;
    response.assert_status(200);
    assert_eq!(response.header("x-total-count"), Some("1"));
    let listed = response.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["id"], conversation.as_str());
    app.stop().await;
}

#[tokio::test]
async fn postgres_connections_the_server_ends_are_replaced() {
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(&database.url).await.unwrap();
    // Several connections in the pool at once.
    let pings = (0..4).map(|_| store.ping());
    for ping in futures::future::join_all(pings).await {
        ping.unwrap();
    }
    let mut admin = PgConnection::connect(&database.url).await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    let _ = admin.close().await;
    // Each ended connection fails at most one query, then leaves the pool.
    let mut failures = 0;
    while store.user_by_id(1).await.is_err() {
        failures += 1;
        assert!(failures <= 4, "ended connections stayed in the pool");
    }
    for _ in 0..20 {
        store.user_by_id(1).await.expect("fresh connections answer");
    }
}

fn call(
    user: Option<i64>,
    conversation: Option<i64>,
    model: &str,
    tokens: (i64, i64),
    estimated: bool,
    at: chrono::DateTime<chrono::Utc>,
) -> NewUsage {
    NewUsage {
        user_id: user,
        conversation_id: conversation,
        model: model.to_owned(),
        kind: "reply",
        prompt_tokens: tokens.0,
        completion_tokens: tokens.1,
        estimated,
        created_at: at,
    }
}

async fn usage_is_summed_grouped_and_goes_with_its_user(store: Arc<dyn Store>) {
    use chrono::TimeZone;
    let sam = store
        .create_user(&new_user("sam", None, None))
        .await
        .unwrap();
    let tom = store
        .create_user(&new_user("tom", None, None))
        .await
        .unwrap();
    let day = |d| chrono::Utc.with_ymd_and_hms(2026, 12, d, 12, 0, 0).unwrap();
    store
        .record_usage(&[
            call(Some(sam.id), Some(7), "m-a", (10, 5), false, day(1)),
            call(Some(sam.id), Some(7), "m-b", (20, 10), true, day(1)),
            call(Some(sam.id), Some(8), "m-a", (1, 1), false, day(3)),
            call(Some(tom.id), None, "m-a", (100, 100), false, day(3)),
            call(None, Some(9), "m-a", (4, 4), true, day(3)),
        ])
        .await
        .unwrap();
    store.record_usage(&[]).await.unwrap();
    let range = |user, group_by| UsageQuery {
        user_id: user,
        from: day(1) - chrono::Duration::hours(12),
        to: day(4),
        group_by,
    };
    let total = store
        .usage_report(&range(Some(sam.id), UsageGrouping::None))
        .await
        .unwrap();
    assert_eq!(total.len(), 1);
    assert_eq!(
        (total[0].prompt_tokens, total[0].completion_tokens),
        (31, 16)
    );
    assert_eq!((total[0].requests, total[0].estimated_tokens), (3, 30));
    let by_day = store
        .usage_report(&range(Some(sam.id), UsageGrouping::Day))
        .await
        .unwrap();
    let days: Vec<_> = by_day.iter().map(|g| (g.number, g.requests)).collect();
    let first = day(1).timestamp() / 86_400;
    assert_eq!(days, [(Some(first), 2), (Some(first + 2), 1)]);
    let by_model = store
        .usage_report(&range(None, UsageGrouping::Model))
        .await
        .unwrap();
    let models: Vec<_> = by_model
        .iter()
        .map(|g| (g.text.as_deref(), g.requests))
        .collect();
    assert_eq!(models, [(Some("m-a"), 4), (Some("m-b"), 1)]);
    let by_conversation = store
        .usage_report(&range(Some(sam.id), UsageGrouping::Conversation))
        .await
        .unwrap();
    let conversations: Vec<_> = by_conversation.iter().map(|g| g.number).collect();
    assert_eq!(conversations, [Some(7), Some(8)]);
    let by_user = store
        .usage_report(&range(None, UsageGrouping::User))
        .await
        .unwrap();
    assert_eq!(by_user.len(), 3, "{by_user:?}");
    // The period bounds: from included, to excluded.
    let narrow = UsageQuery {
        from: day(3),
        to: day(3),
        ..range(None, UsageGrouping::None)
    };
    assert!(store.usage_report(&narrow).await.unwrap().is_empty());
    assert_eq!(store.tokens_since(sam.id, day(2)).await.unwrap(), 2);
    assert_eq!(
        store
            .tokens_since(sam.id, day(1) - chrono::Duration::days(1))
            .await
            .unwrap(),
        47
    );

    assert!(store.delete_user(sam.id).await.unwrap());
    let left = store
        .usage_report(&range(None, UsageGrouping::User))
        .await
        .unwrap();
    let users: Vec<_> = left.iter().map(|g| g.number).collect();
    assert_eq!(users.len(), 2);
    assert!(!users.contains(&Some(sam.id)));
    assert_eq!(store.tokens_since(sam.id, day(1)).await.unwrap(), 0);
}

async fn user_limits_are_set_and_cleared(store: Arc<dyn Store>) {
    let uma = store
        .create_user(&new_user("uma", None, None))
        .await
        .unwrap();
    assert_eq!(
        store.user_limits(uma.id).await.unwrap(),
        UserLimits::default()
    );
    let set = UserLimits {
        tokens_per_day: Some(1000),
        tokens_per_month: None,
        messages_per_minute: Some(3),
    };
    assert_eq!(store.set_user_limits(uma.id, &set).await.unwrap(), set);
    assert_eq!(store.user_limits(uma.id).await.unwrap(), set);
    let cleared = UserLimits::default();
    assert_eq!(
        store.set_user_limits(uma.id, &cleared).await.unwrap(),
        cleared
    );
    assert_eq!(store.user_limits(uma.id).await.unwrap(), cleared);
    store.set_user_limits(uma.id, &set).await.unwrap();
    assert!(store.delete_user(uma.id).await.unwrap());
    assert_eq!(
        store.user_limits(uma.id).await.unwrap(),
        UserLimits::default()
    );
}
