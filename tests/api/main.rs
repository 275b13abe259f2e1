//! The integration tests: one binary, a real server per test, one module per area.
//!
//! The harness is `helpers` (with `test_database`, `ws_client` and `scrape`); the fakes of the
//! services around this one are `fake_llm` and `fake_analytics`.

mod access;
mod admin;
mod analytics;
mod auth;
mod conversations;
mod durability;
mod fake_analytics;
mod fake_llm;
mod group_commit;
mod health;
mod helpers;
mod live;
mod llm;
mod messages;
mod metrics;
mod rest_chat;
mod salt;
mod scrape;
mod store;
mod test_database;
mod users;
mod validation;
mod ws;
mod ws_client;
