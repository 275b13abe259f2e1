//! JWT verification and minting, and the extractors that authenticate requests.

use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::analytics::CallerSlot;
use crate::config::Settings;
use crate::db::{Scope, User};
use crate::error::ApiError;
use crate::state::AppState;

/// Claims of the platform's tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Username.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Roles such as `admin`, `manager`, `user`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The auth server's user id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<serde_json::Value>,
    /// Email, used when the user is provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Why a token was refused; the message is safe to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token at all.
    #[error("Not authenticated")]
    Missing,
    /// The token has expired.
    #[error("Token has expired")]
    Expired,
    /// Bad signature, algorithm, claims or shape.
    #[error("Could not validate credentials")]
    Invalid,
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        ApiError::Unauthorized(err.to_string())
    }
}

/// The HS256 keys and validation rules, built once at start.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtKeys {
    /// Keys for a shared secret and the optional issuer and audience rules.
    pub fn new(secret: &str, issuer: Option<String>, audience: Option<String>) -> Self {
        // Only HS256: a token naming any other algorithm (or `none`) is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        match &issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".to_owned());
            }
            None => validation.iss = None,
        }
        match &audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            issuer,
            audience,
        }
    }

    /// Keys from the settings; the secret must be known by now.
    pub fn from_settings(settings: &Settings, secret: &str) -> Self {
        Self::new(
            secret,
            settings.jwt_issuer.clone(),
            settings.jwt_audience.clone(),
        )
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if data.claims.sub.trim().is_empty() {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }

    /// Signs a token for `sub` with these roles, valid for `ttl`.
    pub fn mint(&self, sub: &str, roles: &[String], ttl: Duration, email: Option<&str>) -> String {
        let exp = chrono::Utc::now().timestamp().max(0) as u64 + ttl.as_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            exp,
            roles: roles.to_vec(),
            user_id: None,
            email: email.map(str::to_owned),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }
}

/// A random secret for a run without `AUTH_SECRET_KEY`.
pub fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The authenticated caller: their user row and roles.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The caller's row, provisioned on first sight.
    pub user: User,
    /// Roles from the token.
    pub roles: Vec<String>,
}

impl AuthUser {
    /// Whether the caller may do everything.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    /// Whether the caller may read everything.
    pub fn is_manager(&self) -> bool {
        self.roles.iter().any(|r| r == "manager")
    }

    /// Whether the caller may read every user's data.
    pub fn can_read_all(&self) -> bool {
        self.is_admin() || self.is_manager()
    }

    /// The scope of the caller's reads of conversations reached without an owner in the path.
    pub fn read_scope(&self) -> Scope {
        if self.can_read_all() {
            Scope::Anyone
        } else {
            Scope::Owner(self.user.id)
        }
    }

    /// The scope of the caller's changes of conversations reached without an owner in the path.
    pub fn write_scope(&self) -> Scope {
        if self.is_admin() {
            Scope::Anyone
        } else {
            Scope::Owner(self.user.id)
        }
    }
}

/// The bearer token of an `Authorization` header, if any.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Verifies a token and loads (or provisions) its user; inactive users are refused.
pub async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = state.jwt.verify(token)?;
    let user = match state.users.get(&claims.sub) {
        Some(user) => user,
        None => {
            let (user, created) = state
                .store
                .provision_user(&claims.sub, claims.email.as_deref())
                .await?;
            if created {
                tracing::info!(user_id = user.id, "provisioned user from token");
                state.analytics.user_synced(&user, &claims.roles);
            }
            state.users.insert(&user);
            user
        }
    };
    if !user.is_active {
        return Err(ApiError::Forbidden("Inactive user".to_owned()));
    }
    Ok(AuthUser {
        user,
        roles: claims.roles,
    })
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        let state = AppState::from_ref(state);
        let token = bearer_token(parts).ok_or(TokenError::Missing)?;
        let user = authenticate(&state, token).await?;
        // Other extractors of the same request reuse it.
        parts.extensions.insert(user.clone());
        // The analytics layer reads the caller after the handler; extensions do not reach
        // the response, so it left a shared slot to fill.
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            slot.record(user.user.id);
        }
        Ok(user)
    }
}

/// A caller with the `admin` role.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl<S> FromRequestParts<S> for AdminUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.is_admin() {
            Ok(Self(user))
        } else {
            Err(ApiError::forbidden())
        }
    }
}

/// A caller with the `admin` or `manager` role.
#[derive(Debug, Clone)]
pub struct StaffUser(pub AuthUser);

impl<S> FromRequestParts<S> for StaffUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.can_read_all() {
            Ok(Self(user))
        } else {
            Err(ApiError::forbidden())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let keys = JwtKeys::new("secret", None, None);
        let token = keys.mint("alice", &["admin".into()], Duration::from_secs(60), None);
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.roles, vec!["admin".to_owned()]);
        let other = JwtKeys::new("other", None, None);
        assert_eq!(other.verify(&token).unwrap_err(), TokenError::Invalid);
        assert_eq!(keys.verify("not.a.token").unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_set() {
        let strict = JwtKeys::new("s", Some("auth".into()), Some("chat".into()));
        let loose = JwtKeys::new("s", None, None);
        let token = loose.mint("bob", &[], Duration::from_secs(60), None);
        assert_eq!(strict.verify(&token).unwrap_err(), TokenError::Invalid);
        let token = strict.mint("bob", &[], Duration::from_secs(60), None);
        assert!(strict.verify(&token).is_ok());
    }

    #[test]
    fn random_secrets_differ() {
        assert_ne!(random_secret(), random_secret());
        assert_eq!(random_secret().len(), 64);
    }
}
