//! The API integration tests: one binary, a server per test.

mod analytics;
mod analytics_support;
mod metrics;
