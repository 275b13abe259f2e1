//! The integration tests: one binary, a real server per test, one module per area.
//!
//! The harness is `helpers` (with `test_database`, `ws_client` and `scrape`); the fakes of the
//! services around this one are `fake_llm`, `fake_analytics` and `fake_mcp`.

mod access;
mod address_guard;
mod admin;
mod analytics;
mod api_keys;
mod auth;
mod bounds;
mod compat;
mod conversations;
mod durability;
mod fake_analytics;
mod fake_llm;
mod fake_mcp;
mod faults;
mod first_token;
mod group_commit;
mod health;
mod helpers;
mod hostile_llm;
mod live;
mod llm;
mod mcp_client;
mod mcp_failures;
mod mcp_floods;
mod mcp_servers;
mod messages;
mod metrics;
mod one_request;
mod openai_api;
mod openapi;
mod page;
mod rest_chat;
mod salt;
mod scrape;
mod search;
mod service_process;
mod shutdown;
mod slow_clients;
mod store;
mod test_database;
mod titles;
mod tools;
mod trees;
mod usage;
mod users;
mod validation;
mod ws;
mod ws_client;
