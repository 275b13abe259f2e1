//! Body, query and path extractors whose rejections are `ApiError`s with FastAPI-style
//! statuses, shared by the REST routes and the WebSocket upgrades.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::ids::IdKind;
use crate::state::AppState;

/// A JSON body: 422 naming the field when it does not fit, 413 over the size limit,
/// 415 when it is not JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        // Read as `Bytes` first, within the body limit, to look for NUL after parsing.
        let bytes =
            axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
                .await
                .map_err(|rejection| json_rejection(JsonRejection::BytesRejection(rejection)))?;
        let req = Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
        let value = match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        // PostgreSQL cannot store a NUL character in text; no store should get one.
        if has_nul_escape(&bytes)
            && serde_json::from_slice::<Value>(&bytes).is_ok_and(|json| nul_in_kept::<T>(&json))
        {
            return Err(ApiError::Validation(
                "Invalid request body: text must not contain NUL characters".to_owned(),
            ));
        }
        Ok(Self(value))
    }
}

/// Whether JSON text escapes a NUL character (`\u0000`; a backslash that is itself escaped
/// does not count). Raw NUL bytes are not valid JSON and fail parsing anyway.
pub fn has_nul_escape(json: &[u8]) -> bool {
    json.windows(6)
        .enumerate()
        .filter(|(_, window)| window.eq_ignore_ascii_case(b"\\u0000"))
        .any(|(start, _)| {
            let backslashes = json[..=start]
                .iter()
                .rev()
                .take_while(|b| **b == b'\\')
                .count();
            backslashes % 2 == 1
        })
}

/// Whether a NUL character is in what `T` reads of `json`: a string or an object key that it
/// keeps. What `T` ignores (unknown keys and their values) is never stored, so a NUL there
/// is harmless and refusing it would refuse a request the schema allows.
pub fn nul_in_kept<T: DeserializeOwned>(json: &Value) -> bool {
    let mut ignored: Vec<Vec<Step>> = Vec::new();
    let _ = serde_ignored::deserialize::<_, _, T>(json, |path| ignored.push(steps(&path)));
    let mut kept = json.clone();
    for path in &ignored {
        remove(&mut kept, path);
    }
    contains_nul(&kept)
}

/// One step of the way from a JSON document to one of its values.
enum Step {
    Key(String),
    Index(usize),
}

fn steps(path: &serde_ignored::Path<'_>) -> Vec<Step> {
    use serde_ignored::Path;
    let (parent, step) = match path {
        Path::Root => return Vec::new(),
        Path::Map { parent, key } => (parent, Some(Step::Key(key.clone()))),
        Path::Seq { parent, index } => (parent, Some(Step::Index(*index))),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => (parent, None),
    };
    let mut steps = self::steps(parent);
    steps.extend(step);
    steps
}

/// Takes the value at `path` out of `json` (an array element becomes `null`, so the indexes
/// of the others hold); a path that leads nowhere changes nothing.
fn remove(json: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut value = json;
    for step in parents {
        let next = match step {
            Step::Key(key) => value.get_mut(key.as_str()),
            Step::Index(index) => value.get_mut(*index),
        };
        match next {
            Some(next) => value = next,
            None => return,
        }
    }
    match (last, value) {
        (Step::Key(key), Value::Object(object)) => {
            object.remove(key);
        }
        (Step::Index(index), Value::Array(array)) => {
            if let Some(element) = array.get_mut(*index) {
                *element = Value::Null;
            }
        }
        _ => {}
    }
}

fn contains_nul(json: &Value) -> bool {
    match json {
        Value::String(text) => text.contains('\0'),
        Value::Array(values) => values.iter().any(contains_nul),
        Value::Object(object) => object
            .iter()
            .any(|(key, value)| key.contains('\0') || contains_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        // The text names the field path, e.g. `role: unknown variant ...`.
        JsonRejection::JsonDataError(err) => ApiError::Validation(format!(
            "Invalid request body: {}",
            err.body_text()
                .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        )),
        // serde_json also files some type errors here (an enum given a number), so the text,
        // which names the field, is kept.
        JsonRejection::JsonSyntaxError(err) => ApiError::Validation(format!(
            "Invalid request body: malformed JSON or wrong type: {}",
            err.body_text()
                .trim_start_matches("Failed to parse the request body as JSON: ")
        )),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "Expected request with `Content-Type: application/json`".to_owned(),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("Request body is too large".to_owned())
        }
        other => ApiError::BadRequest(format!(
            "Could not read the request body ({})",
            other.status()
        )),
    }
}

/// Query parameters: 422 naming the parameter when they do not fit.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => {
                Err(ApiError::Validation(format!(
                    "Invalid query parameters: {}",
                    err.body_text()
                        .trim_start_matches("Failed to deserialize query string: ")
                )))
            }
            Err(other) => Err(ApiError::Validation(other.body_text())),
        }
    }
}

/// Path parameters: a segment that cannot be read (such as invalid UTF-8) names no resource,
/// so it answers a JSON 404 like any unknown ID.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::NotFound("Not Found".to_owned()))
            }
            Err(other) => Err(ApiError::Internal(anyhow::anyhow!(other.body_text()))),
        }
    }
}

/// Reads an optional JSON integer, accepting a number with a zero fraction (`12.0`): JSON
/// Schema counts it as an integer, and so did the original service. Use with
/// `#[serde(default, deserialize_with = "...")]`.
pub fn optional_integer<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Integer;

    impl<'a> serde::de::Visitor<'a> for Integer {
        type Value = Option<i64>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("an integer or null")
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(Some(value))
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
            i64::try_from(value)
                .map(Some)
                .map_err(|_| E::custom("integer out of range"))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Self::Value, E> {
            // 2^63 is exact as a float, so the range check is exact too.
            let bound = -(i64::MIN as f64);
            if value.fract() == 0.0 && (-bound..bound).contains(&value) {
                Ok(Some(value as i64))
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(value), &self))
            }
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'a>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    deserializer.deserialize_option(Integer)
}

/// The key of a public ID of `kind`; 404 naming `what` for anything else.
pub fn public_key(kind: &IdKind, raw: &str, what: &str) -> ApiResult<i64> {
    kind.decode(raw).ok_or_else(|| ApiError::not_found(what))
}

/// The key of a conversation's public ID; 404 for anything else.
pub fn conversation_key(state: &AppState, raw: &str) -> ApiResult<i64> {
    public_key(&state.ids.conversation, raw, "Conversation")
}

/// The key of a message's public ID; 404 when it is not one.
pub fn message_key(state: &AppState, raw: &str) -> ApiResult<i64> {
    public_key(&state.ids.message, raw, "Message")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{nul_in_kept, optional_integer};

    /// A body with stored text, free-form metadata, a list and a nested part; other keys are
    /// ignored.
    #[allow(dead_code)]
    #[derive(Debug, serde::Deserialize)]
    struct Stored {
        title: Option<String>,
        metadata: Option<serde_json::Value>,
        tags: Option<Vec<String>>,
        part: Option<Part>,
    }

    #[allow(dead_code)]
    #[derive(Debug, serde::Deserialize)]
    struct Part {
        text: String,
    }

    #[test]
    fn nul_counts_only_in_what_the_type_keeps() {
        for kept in [
            json!({"title": "a\u{0}b"}),
            json!({"metadata": {"k\u{0}": 1}}),
            json!({"metadata": {"k": ["x", "\u{0}"]}}),
            json!({"tags": ["ok", "n\u{0}"]}),
            json!({"part": {"text": "\u{0}"}}),
            json!({"part": {"text": "t", "extra": 1}, "title": "\u{0}"}),
        ] {
            assert!(nul_in_kept::<Stored>(&kept), "{kept}");
        }
        for ignored in [
            json!({"title": "plain"}),
            json!({"unknown\u{0}": "x"}),
            json!({"unknown": "\u{0}", "title": "t"}),
            json!({"unknown": {"deep\u{0}": ["\u{0}"]}}),
            json!({"part": {"text": "t", "extra\u{0}": "\u{0}"}}),
        ] {
            assert!(!nul_in_kept::<Stored>(&ignored), "{ignored}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "optional_integer")]
        n: Option<i64>,
    }

    fn read(json: &str) -> Result<Option<i64>, serde_json::Error> {
        serde_json::from_str::<Body>(json).map(|b| b.n)
    }

    #[test]
    fn integers_with_a_zero_fraction_are_integers() {
        assert_eq!(read(r#"{"n": 12}"#).unwrap(), Some(12));
        assert_eq!(read(r#"{"n": -3}"#).unwrap(), Some(-3));
        assert_eq!(
            read(r#"{"n": 2936907536220.0}"#).unwrap(),
            Some(2_936_907_536_220)
        );
        assert_eq!(read(r#"{"n": 1e3}"#).unwrap(), Some(1000));
        assert_eq!(read(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(read("{}").unwrap(), None);
    }

    #[test]
    fn fractions_out_of_range_numbers_and_other_types_are_refused() {
        for json in [
            r#"{"n": 1.5}"#,
            r#"{"n": 9223372036854775808}"#,
            r#"{"n": 1e19}"#,
            r#"{"n": "1"}"#,
            r#"{"n": true}"#,
        ] {
            let err = read(json).unwrap_err().to_string();
            assert!(err.contains("integer"), "{json}: {err}");
        }
    }
}
