//! Who may use the console: the token login, the session cookie, and the
//! checks every request passes before a route sees it (session, then for
//! POSTs the cross-site request checks).
//!
//! Without a token (a loopback listener) there is no login; the Host header
//! must then name the loopback, or a web page could reach the console by
//! DNS rebinding (its own name resolving to 127.0.0.1), with its own name
//! as Origin and Host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Method};

use super::error::ApiFailure;
use super::options::Token;

/// The cookie holding the session id.
pub const COOKIE: &str = "sd_console";
/// The header every POST must carry: a cross-site form cannot set it, and
/// a cross-site script cannot without a CORS preflight the console never
/// answers.
pub const CSRF_HEADER: &str = "x-stringdriver-console";
/// Sessions kept at most; the oldest is dropped beyond.
pub const MAX_SESSIONS: usize = 256;
/// How long a session lasts after its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The login state of one console.
pub struct Auth {
    token: Option<Token>,
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Auth {
    /// Logins against `token` (none: no login).
    pub fn new(token: Option<Token>) -> Auth {
        Auth {
            token,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a login is needed.
    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    /// A new session for `given` if it is the token: the cookie's
    /// `Set-Cookie` value.
    pub fn login(&self, given: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        if !token.matches(given) {
            return None;
        }
        let id = session_id().ok()?;
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.retain(|_, at| now.duration_since(*at) < SESSION_LIFETIME);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                s.remove(&oldest);
            }
        }
        s.insert(id.clone(), now);
        Some(format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            SESSION_LIFETIME.as_secs()
        ))
    }

    /// Whether the request's cookie names a live session (always true
    /// without a token).
    pub fn has_session(&self, headers: &HeaderMap) -> bool {
        if self.token.is_none() {
            return true;
        }
        let Some(id) = cookie(headers, COOKIE) else {
            return false;
        };
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.get(id).is_some_and(|at| at.elapsed() < SESSION_LIFETIME)
    }

    /// The checks of a request other than the login's own: the Host of a
    /// token-less console, then the session, then for a POST the CSRF
    /// header, the JSON content type and the Origin.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiFailure> {
        if self.token.is_none() && !loopback_host(headers) {
            return Err(ApiFailure::forbidden(
                "host",
                "this console serves the loopback only: open it as http://127.0.0.1:PORT/ or http://localhost:PORT/",
            ));
        }
        if !self.has_session(headers) {
            return Err(ApiFailure::unauthorized());
        }
        if method == Method::POST {
            same_origin_post(headers)?;
        }
        Ok(())
    }

    /// The Origin check alone (the login form's POST, which cannot carry
    /// the custom header).
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiFailure> {
        origin_matches(headers)
    }
}

/// 32 random bytes from the OS, as hex: unguessable session ids.
fn session_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: no browser, no rebinding.
        return true;
    };
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) => n,
        _ => host,
    };
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

fn origin_matches(headers: &HeaderMap) -> Result<(), ApiFailure> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let own = format!("http://{host}");
    if origin.to_str().ok() == Some(own.as_str()) {
        Ok(())
    } else {
        Err(ApiFailure::forbidden(
            "csrf",
            format!(
                "cross-site request refused: Origin {:?} is not this console ({own})",
                String::from_utf8_lossy(origin.as_bytes())
            ),
        ))
    }
}

fn same_origin_post(headers: &HeaderMap) -> Result<(), ApiFailure> {
    if headers.get(CSRF_HEADER).map(|v| v.as_bytes()) != Some(b"1") {
        return Err(ApiFailure::forbidden(
            "csrf",
            "cross-site request refused: the header X-Stringdriver-Console: 1 is missing",
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiFailure::forbidden(
            "csrf",
            "cross-site request refused: Content-Type must be application/json",
        ));
    }
    origin_matches(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cookies_are_found_by_name_across_headers() {
        let h = headers(&[("cookie", "a=1; sd_console=abc"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "sd"), None);
    }

    #[test]
    fn a_token_less_console_answers_loopback_names_only() {
        let auth = Auth::new(None);
        for host in [
            "127.0.0.1:7125",
            "localhost:7125",
            "[::1]:7125",
            "localhost",
        ] {
            assert!(
                auth.check(&Method::GET, &headers(&[("host", host)]))
                    .is_ok(),
                "{host}"
            );
        }
        for host in [
            "evil.example:7125",
            "127.0.0.1.evil.example",
            "10.0.0.5:7125",
        ] {
            let e = auth
                .check(&Method::GET, &headers(&[("host", host)]))
                .unwrap_err();
            assert_eq!(e.kind, "host", "{host}");
        }
    }

    #[test]
    fn a_login_makes_a_fresh_session_and_a_wrong_token_none() {
        let auth = Auth::new(Some(Token::new("0123456789abcdef").expect("token")));
        assert!(auth.login("0123456789abcdeX").is_none());
        let a = auth.login("0123456789abcdef").expect("cookie");
        let b = auth.login("0123456789abcdef").expect("cookie");
        assert_ne!(a, b);
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(a.contains(attr), "{a}");
        }
        let id = a
            .split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v.to_string())
            .expect("id");
        assert_eq!(id.len(), 64);
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_str(&format!("{COOKIE}={id}")).expect("ascii"),
        );
        assert!(auth.has_session(&h));
        assert!(!auth.has_session(&headers(&[("cookie", "sd_console=00")])));
    }
}
