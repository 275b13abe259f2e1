//! chat-service: a JWT-authenticated chat backend with WebSocket streaming from
//! OpenAI-compatible LLMs.

pub mod analytics;
pub mod auth;
pub mod chat;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod connections;
pub mod db;
pub mod dto;
pub mod error;
pub mod extract;
pub mod ids;
pub mod jwt;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod search;
pub mod service;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod user_cache;
pub mod ws;
