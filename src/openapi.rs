//! The OpenAPI document: metadata, the bearer security scheme, the error answers that many
//! operations share, and the constraints that come from the configuration. Paths come from
//! the routers.

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Object, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::config::Settings;
use crate::error::ErrorBody;

/// Root of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chat-service",
        description = "Chat backend: users, conversations, messages and MCP servers over \
            REST, streaming LLM replies over WebSocket, and an OpenAI-compatible API under `/v1`. \
            Authenticate with a bearer JWT (HS256) or a personal API key (`cs-...`)."
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
        (name = "api-keys", description = "Personal API keys: a bearer credential for \
            scripts and OpenAI-compatible clients, answered once; a key acts with plain user \
            rights, never an admin's or a manager's"),
        (name = "openai", description = "OpenAI-compatible API: OpenAI's wire format and \
            errors; every call kept as a conversation"),
        (name = "search", description = "Full-text search of a user's messages and \
            conversation titles"),
        (name = "admin", description = "Administration"),
        (name = "usage", description = "LLM usage, message rate limits and token budgets"),
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

/// An error answer with the error body.
fn error_response(description: &str) -> ResponseBuilder {
    error_response_in("ErrorBody", description)
}

/// An error answer whose body is the component schema `schema`.
fn error_response_in(schema: &str, description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(schema)))
            .build(),
    )
}

/// The `WWW-Authenticate: Bearer` header of a 401.
fn challenge() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Object::with_type(Type::String))
        .description(Some("`Bearer`"))
        .build()
}

fn responses<const N: usize>(entries: [(u16, Response); N]) -> BTreeMap<String, RefOr<Response>> {
    entries
        .into_iter()
        .map(|(status, response)| (status.to_string(), RefOr::T(response)))
        .collect()
}

/// The answers of every operation that takes a bearer token: 401 without a valid one, 403
/// when its user is inactive or lacks the role or the ownership the operation needs.
pub struct AuthErrors;

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            (
                401,
                error_response("Missing, malformed, invalid or expired bearer token")
                    .header("www-authenticate", challenge())
                    .build(),
            ),
            (
                403,
                error_response(
                    "The token's user is inactive, or lacks the role or ownership this needs",
                )
                .build(),
            ),
        ])
    }
}

/// The answers of every operation that reads a JSON body.
pub struct BodyErrors;

impl IntoResponses for BodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            (
                408,
                error_response(
                    "The body did not arrive within `BODY_READ_TIMEOUT_SECONDS`; the connection \
                     is closed",
                )
                .build(),
            ),
            (
                413,
                error_response("The body is over the size limit (`MAX_BODY_BYTES`)").build(),
            ),
            (
                415,
                error_response("The body is not sent as `application/json`").build(),
            ),
            (
                422,
                error_response("The body or a parameter fails validation; the message names it")
                    .build(),
            ),
        ])
    }
}

/// The schema of the OpenAI-compatible API's errors.
const OPENAI_ERROR: &str = "OpenAiErrorBody";

/// [`AuthErrors`] of the OpenAI-compatible API, in OpenAI's error shape.
pub struct OpenAiAuthErrors;

impl IntoResponses for OpenAiAuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            (
                401,
                error_response_in(
                    OPENAI_ERROR,
                    "Missing, unknown, revoked or expired API key (or JWT): `invalid_api_key`",
                )
                .header("www-authenticate", challenge())
                .build(),
            ),
            (
                403,
                error_response_in(OPENAI_ERROR, "The caller's user is inactive").build(),
            ),
        ])
    }
}

/// [`BodyErrors`] of the OpenAI-compatible API, in OpenAI's error shape and statuses.
pub struct OpenAiBodyErrors;

impl IntoResponses for OpenAiBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            (
                400,
                error_response_in(
                    OPENAI_ERROR,
                    "Malformed JSON, or a request OpenAI would refuse; `param` names the field",
                )
                .build(),
            ),
            (
                408,
                error_response_in(
                    OPENAI_ERROR,
                    "The body did not arrive within `BODY_READ_TIMEOUT_SECONDS`",
                )
                .build(),
            ),
            (
                413,
                error_response_in(
                    OPENAI_ERROR,
                    "The body is over the size limit (`MAX_BODY_BYTES`)",
                )
                .build(),
            ),
        ])
    }
}

/// The answer of an operation whose query parameters can fail validation.
pub struct QueryErrors;

impl IntoResponses for QueryErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([(
            422,
            error_response("A query parameter fails validation; the message names it").build(),
        )])
    }
}

/// Unicode whitespace as `str::trim` reads it, for a regular expression's character class.
/// Spelled out because JSON Schema validators disagree on what `\s` means.
const SPACE: &str = r"\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
/// Control characters (`char::is_control`), for a character class.
const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";

/// The rules of text fields that a pattern states: (schema, property, pattern). They mirror
/// the checks of `service::validate` and the user routes, and are long, so they live here once.
fn text_patterns() -> Vec<(&'static str, &'static str, String)> {
    // Not blank: some character that is not whitespace.
    let not_blank = format!("[^{SPACE}]");
    // No control characters, no whitespace at either end.
    let edge = format!("[^{CONTROL}{SPACE}]");
    let username = format!("^{edge}(?:[^{CONTROL}]*{edge})?$");
    // `local@domain`: no whitespace, one `@`, a dot in the domain but not at either end.
    let email = format!("^[^@{SPACE}]+@[^@.{SPACE}][^@{SPACE}]*\\.[^@{SPACE}]*[^@.{SPACE}]$");
    vec![
        ("ConversationCreate", "title", not_blank.clone()),
        ("ApiKeyCreate", "name", not_blank.clone()),
        (
            "ApiKeyCreate",
            "expires_at",
            crate::service::validate::RFC_3339_PATTERN.to_owned(),
        ),
        ("UnnestedConversationCreate", "title", not_blank.clone()),
        ("McpServerCreate", "name", not_blank.clone()),
        ("McpServerUpdate", "name", not_blank.clone()),
        ("ConversationUpdate", "title", not_blank.clone()),
        ("MessageCreate", "content", not_blank.clone()),
        ("ChatRequest", "content", not_blank),
        ("UserCreate", "username", username.clone()),
        ("UserUpdate", "username", username),
        ("UserCreate", "email", email.clone()),
        ("UserUpdate", "email", email),
    ]
}

/// Completes the document with what attributes cannot state: the patterns of text fields,
/// the models a conversation may choose and the longest message, both from the settings.
///
/// # Panics
/// When a schema property it names does not exist, which any test that starts the service
/// reveals.
pub fn configure(document: &mut utoipa::openapi::OpenApi, settings: &Settings) {
    for (schema, name, pattern) in text_patterns() {
        property(document, schema, name).pattern = Some(pattern);
    }
    for schema in ["McpServerCreate", "McpServerUpdate"] {
        property(document, schema, "server_url").pattern =
            Some(crate::service::validate::SERVER_URL_PATTERN.to_owned());
    }
    let mut models: Vec<Value> = settings
        .llm
        .allowed_models
        .iter()
        .map(|m| Value::String(m.clone()))
        .collect();
    models.push(Value::Null);
    property(document, "ConversationCreate", "model").enum_values = Some(models.clone());
    property(document, "UnnestedConversationCreate", "model").enum_values = Some(models);
    for schema in ["MessageCreate", "ChatRequest"] {
        property(document, schema, "content").max_length = Some(settings.limits.max_message_chars);
    }
}

/// A property of a component schema.
fn property<'a>(
    document: &'a mut utoipa::openapi::OpenApi,
    schema: &str,
    name: &str,
) -> &'a mut Object {
    let found = document
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut(schema))
        .and_then(|s| match s {
            RefOr::T(Schema::Object(object)) => object.properties.get_mut(name),
            _ => None,
        });
    match found {
        Some(RefOr::T(Schema::Object(property))) => property,
        _ => panic!("the OpenAPI document has no inline property {schema}.{name}"),
    }
}
