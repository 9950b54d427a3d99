//! Bearer tokens: HS256 JWTs signed with `AUTH_JWT_SECRET`.
//!
//! The algorithm is pinned (a token announcing `none` or any other algorithm
//! is refused), `exp` is required, `nbf` is honoured when present (both with
//! the same small leeway), and `iss`/`aud` are checked when configured.
//! `sub` is the actor id; the optional `actor_type` claim is `user` (the
//! default) or `service`.

use std::time::Duration;

use actix_web::http::header;
use actix_web::HttpRequest;
use audit_event::ActorType;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, JwtSecret};

/// Longest accepted actor id, in characters.
pub const MAX_ACTOR_ID_CHARS: usize = 255;

/// Tolerated clock difference between the token issuer and us.
const LEEWAY_SECS: u64 = 30;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    pub kind: ActorType,
}

/// Why a request is not authenticated. Shown to the client: says what is
/// wrong with the token, never echoes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("the Authorization header must be `Bearer <token>`")]
    NotBearer,
    #[error("more than one Authorization header")]
    Ambiguous,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Checks tokens; built once from the configuration.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    actor_type: Option<String>,
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss`/`aud` only when present unless they are
        // also listed as required: a token without them must not slip by.
        let mut required = vec!["exp", "sub"];
        match &config.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without this, jsonwebtoken refuses every token that carries
            // an `aud` claim when no audience is configured.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Verifier {
            key: DecodingKey::from_secret(config.secret.as_bytes()),
            validation,
        }
    }

    /// The actor of a request, from its `Authorization` header. Two such
    /// headers are refused rather than one of them picked: a proxy and the
    /// service must never disagree on who the caller is.
    pub fn authenticate(&self, request: &HttpRequest) -> Result<Actor, AuthError> {
        let mut values = request.headers().get_all(header::AUTHORIZATION);
        let value = values.next().ok_or(AuthError::Missing)?;
        if values.next().is_some() {
            return Err(AuthError::Ambiguous);
        }
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        self.verify(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Actor, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(describe(&e)))?;
        let claims = data.claims;
        let kind = match claims.actor_type.as_deref() {
            None | Some("user") => ActorType::User,
            Some("service") => ActorType::Service,
            Some(_) => {
                return Err(AuthError::Invalid(
                    "actor_type must be `user` or `service`".into(),
                ))
            }
        };
        check_actor_id(&claims.sub).map_err(|reason| AuthError::Invalid(reason.into()))?;
        Ok(Actor {
            id: claims.sub,
            kind,
        })
    }
}

fn check_actor_id(sub: &str) -> Result<(), &'static str> {
    if sub.trim().is_empty() {
        return Err("sub must not be empty");
    }
    if sub.chars().count() > MAX_ACTOR_ID_CHARS {
        return Err("sub must be at most 255 characters");
    }
    if sub.chars().any(char::is_control) {
        return Err("sub must not contain control characters");
    }
    Ok(())
}

/// A short reason for the client and the log; jsonwebtoken's own messages
/// are fine but its enum is more than a client needs.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token must be signed with HS256".into()
        }
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim `{claim}`"),
        ErrorKind::ImmatureSignature => "the token is not valid yet".into(),
        _ => "malformed token".into(),
    }
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    actor_type: &'static str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Signs an HS256 token for `actor` valid for `ttl`, with `iss`/`aud` when
/// given. Used by the `token` subcommand and by tests.
pub fn issue_token(
    secret: &JwtSecret,
    actor: &str,
    actor_type: ActorType,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> String {
    let now = unix_now();
    let claims = IssuedClaims {
        sub: actor,
        actor_type: actor_type.as_str(),
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        iss: issuer,
        aud: audience,
    };
    // HMAC signing of a serializable struct cannot fail: any key length is
    // accepted and the claims are plain strings and numbers.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_else(|e| unreachable!("HS256 signing failed: {e}"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(issuer: Option<&str>, audience: Option<&str>) -> AuthConfig {
        AuthConfig {
            secret: JwtSecret::new("k".repeat(32)).unwrap(),
            issuer: issuer.map(String::from),
            audience: audience.map(String::from),
        }
    }

    fn token(config: &AuthConfig, sub: &str) -> String {
        issue_token(
            &config.secret,
            sub,
            ActorType::Service,
            Duration::from_secs(60),
            config.issuer.as_deref(),
            config.audience.as_deref(),
        )
    }

    #[test]
    fn an_issued_token_verifies_to_its_actor() {
        let config = config(Some("iss"), Some("aud"));
        let actor = Verifier::new(&config)
            .verify(&token(&config, "svc-1"))
            .unwrap();
        assert_eq!(
            actor,
            Actor {
                id: "svc-1".into(),
                kind: ActorType::Service
            }
        );
    }

    #[test]
    fn a_token_with_an_audience_is_accepted_when_none_is_configured() {
        let with_aud = config(None, Some("anything"));
        let actor = Verifier::new(&config(None, None)).verify(&token(&with_aud, "alice"));
        assert!(actor.is_ok(), "{actor:?}");
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let verifier = Verifier::new(&config(Some("iss"), Some("aud")));
        for other in [
            config(Some("other"), Some("aud")),
            config(Some("iss"), Some("other")),
            config(None, Some("aud")),
            config(Some("iss"), None),
        ] {
            assert!(verifier.verify(&token(&other, "alice")).is_err());
        }
    }

    #[test]
    fn bad_subjects_are_refused() {
        let config = config(None, None);
        let verifier = Verifier::new(&config);
        for sub in ["", "  ", "a\u{0}b", "a\nb", &"x".repeat(256)] {
            assert!(verifier.verify(&token(&config, sub)).is_err(), "{sub:?}");
        }
        assert!(verifier.verify(&token(&config, &"é".repeat(255))).is_ok());
    }
}
