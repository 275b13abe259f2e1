//! The integration tests: one binary, a real server per test, one module per area.

mod access;
mod admin;
mod analytics;
mod analytics_support;
mod auth;
mod chat_support;
mod conversations;
mod fake_llm;
mod health;
mod helpers;
mod llm;
mod messages;
mod metrics;
mod page;
mod rest_chat;
mod store;
mod users;
mod validation;
mod ws;
