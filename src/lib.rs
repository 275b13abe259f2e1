//! chat-service: a JWT-authenticated chat backend with WebSocket streaming from OpenAI-compatible LLMs.

pub mod chat;
pub mod config;
