//! Field checks shared by the use cases and the REST routes.

use super::{ServiceError, ServiceResult};

/// Checks a required text field's length in characters, after trimming.
pub fn check_text(field: &str, value: &str, min: usize, max: usize) -> ServiceResult<()> {
    let len = value.trim().chars().count();
    if len < min {
        return Err(if min == 1 {
            ServiceError::invalid(field, "must not be empty")
        } else {
            ServiceError::invalid(field, &format!("must be at least {min} characters"))
        });
    }
    if value.chars().count() > max {
        return Err(ServiceError::invalid(
            field,
            &format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Checks an optional text field's length in characters.
pub fn check_optional_text(field: &str, value: Option<&str>, max: usize) -> ServiceResult<()> {
    match value {
        Some(value) => check_text(field, value, 0, max),
        None => Ok(()),
    }
}

/// A time as RFC 3339 writes it, `T` and `Z` in capitals, each field within its range. The
/// OpenAPI document states the same pattern.
pub const RFC_3339_PATTERN: &str = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$";

/// Reads a time written as [`RFC_3339_PATTERN`] says.
pub fn parse_time(field: &str, value: &str) -> ServiceResult<chrono::DateTime<chrono::Utc>> {
    static PATTERN: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(RFC_3339_PATTERN).expect("a valid pattern"));
    PATTERN
        .is_match(value)
        .then(|| chrono::DateTime::parse_from_rfc3339(value).ok())
        .flatten()
        .map(|time| time.with_timezone(&chrono::Utc))
        .ok_or_else(|| {
            ServiceError::invalid(field, "must be an RFC 3339 time, e.g. 2030-01-31T12:00:00Z")
        })
}

/// Checks that a metadata value is a JSON object.
pub fn check_object(field: &str, value: Option<&serde_json::Value>) -> ServiceResult<()> {
    match value {
        Some(v) if !v.is_object() => Err(ServiceError::invalid(field, "must be a JSON object")),
        _ => Ok(()),
    }
}

/// What a server URL may look like: `http` or `https`, a host name, an IPv4 address or an
/// IPv6 address in brackets (without an embedded dotted IPv4 part), an optional port, a plain
/// path and query. The OpenAPI document states the same pattern. Which addresses may be
/// reached is decided when the server is used, against the settings of that moment.
pub const SERVER_URL_PATTERN: &str = "^[hH][tT][tT][pP][sS]?://\
    ([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*\
    |\\[(\
    ([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\
    |([0-9a-fA-F]{1,4}:){1,7}:\
    |([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}\
    |([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}\
    |([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}\
    |([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}\
    |([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}\
    |[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}\
    |:((:[0-9a-fA-F]{1,4}){1,7}|:))\\])\
    (:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?\
    (/[a-zA-Z0-9._~-]*)*(\\?[a-zA-Z0-9._~=&-]*)?$";
