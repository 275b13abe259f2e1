//! Chat: LLM providers, history trimming, the reply pipeline, the WebSocket protocol and
//! the hub of live connections.

pub mod context;
pub mod frames;
pub mod hub;
pub mod llm;
pub mod reply;
pub mod session;
