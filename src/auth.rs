//! The extractors that authenticate requests: the bearer token, the caller's user row and
//! the role checks. Tokens themselves are verified by [`crate::jwt`].

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::analytics::CallerSlot;
use crate::config::Secret;
use crate::db::{Scope, User};
use crate::error::ApiError;
use crate::jwt::TokenError;
use crate::service::api_keys;
use crate::service::usage::Role;
use crate::state::AppState;

/// The authenticated caller: their user row and roles.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The caller's row, provisioned on first sight.
    pub user: User,
    /// Roles from the token; only [`api_keys::KEY_ROLE`] for an API key.
    pub roles: Vec<String>,
    /// The token itself, for the platform's MCP servers that authenticate the user with it
    /// (`MCP_FORWARD_USER_TOKEN_HOSTS`); `Debug` never shows it.
    pub token: Secret,
    /// The key of the personal API key the caller presented, when it was one rather than a
    /// JWT: such a caller may not make keys or use admin routes.
    pub api_key: Option<i64>,
}

impl AuthUser {
    /// The caller's token for the MCP servers allowed to receive it: a JWT is, an API key
    /// never leaves the service.
    pub fn user_token(&self) -> Option<Secret> {
        self.api_key.is_none().then(|| self.token.clone())
    }

    /// The caller's highest role.
    pub fn role(&self) -> Role {
        Role::of(&self.roles)
    }

    /// Whether the caller may do everything.
    pub fn is_admin(&self) -> bool {
        self.role() == Role::Admin
    }

    /// Whether the caller may read every user's data (admins and managers).
    pub fn can_read_all(&self) -> bool {
        self.role() != Role::User
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
        token: Secret::new(token),
        api_key: None,
    })
}

/// Authenticates a bearer credential: a personal API key (`cs-...`) or a JWT. A key
/// authenticates as its owner with plain user rights, whatever roles are stored with it; an
/// unknown, revoked or expired key is refused, and so is a deactivated owner's.
pub async fn authenticate_bearer(state: &AppState, credential: &str) -> Result<AuthUser, ApiError> {
    if !api_keys::is_api_key(credential) {
        return authenticate(state, credential).await;
    }
    let found = api_keys::authenticate(state, credential)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("Invalid or expired API key".to_owned()))?;
    if !found.user.is_active {
        return Err(ApiError::Forbidden("Inactive user".to_owned()));
    }
    Ok(AuthUser {
        user: found.user,
        roles: vec![api_keys::KEY_ROLE.to_owned()],
        token: Secret::new(credential),
        api_key: Some(found.key.id),
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
        let user = authenticate_bearer(&state, token).await?;
        crate::connections::mark_authenticated(&parts.extensions);
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

/// A caller with the `admin` role, authenticated by a JWT (an API key never reaches admin
/// routes, whatever its owner's roles).
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
        if user.api_key.is_some() {
            Err(ApiError::Forbidden(
                "API keys cannot be used on admin routes".to_owned(),
            ))
        } else if user.is_admin() {
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
