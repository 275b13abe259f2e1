//! Chat's building blocks below the use cases: LLM providers, history trimming, the kept
//! turn contexts, live events and the hub of live connections.

pub mod context;
pub mod context_cache;
pub mod events;
pub mod hub;
pub mod llm;
