//! Integration tests of the REST API: one binary, one module per area.

mod access;
mod admin;
mod auth;
mod conversations;
mod health;
mod helpers;
mod messages;
mod users;
mod validation;
