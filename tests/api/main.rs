//! The API integration tests: one binary, a server per test.

mod analytics;
mod analytics_support;
mod chat_support;
mod fake_llm;
mod llm;
mod metrics;
mod rest_chat;
mod ws;
