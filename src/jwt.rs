//! JWT keys and claims: verifying the platform's tokens and minting our own (CLI, the
//! analytics service token). Knows nothing of HTTP or users.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Settings;

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
