//! Chat's building blocks below the use cases: LLM providers, history trimming, live events
//! and the hub of live connections.

pub mod context;
pub mod events;
pub mod hub;
pub mod llm;
