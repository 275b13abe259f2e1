//! The OpenAPI document: metadata and the bearer security scheme; paths come from the routers.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;

/// Root of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chat-service",
        description = "Chat backend: users, conversations, messages and MCP servers over \
            REST, streaming LLM replies over WebSocket. Authenticate with a bearer JWT (HS256)."
    ),
    modifiers(&BearerScheme),
    components(schemas(ErrorBody)),
    tags(
        (name = "health", description = "Service information and health"),
        (name = "users", description = "User profiles"),
        (name = "conversations", description = "A user's conversations"),
        (name = "messages", description = "Messages of a conversation"),
        (name = "chat", description = "Chat with the LLM over REST"),
        (name = "mcp-servers", description = "MCP servers whose tools the model may call in \
            their owner's chats; the API key is write-only"),
        (name = "admin", description = "Administration"),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` JWT security scheme that the paths refer to.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
