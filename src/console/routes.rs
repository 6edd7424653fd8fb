//! The HTTP routes (see ARCHITECTURE.md, `console`, for the contract):
//! `/` and `/assets/*` (the page), `/login`, `/api/meta`, `/api/call`
//! (one control-socket request) and `/api/events` (Server-Sent Events).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::broadcast::error::RecvError;

use super::auth::Auth;
use super::daemon_link::DaemonLink;
use super::error::ApiFailure;
use super::hub::{Hub, Message};
use super::{assets, meta};

/// Largest request body: the control socket's own line limit.
pub const MAX_BODY: usize = crate::control::protocol::MAX_LINE;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Requests to the daemon.
    pub link: DaemonLink,
    /// The events fan-out.
    pub hub: Hub,
    /// Logins and request checks.
    pub auth: Arc<Auth>,
}

/// The console's routes, with the checks of [`Auth::check`] in front of
/// every route but the login's.
pub fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/", get(page))
        .route("/assets/{name}", get(asset))
        .route("/api/meta", get(api_meta))
        .route("/api/call", post(api_call))
        .route("/api/events", get(api_events))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/login", get(login_page).post(login))
        .merge(guarded)
        .fallback(not_found)
        .layer(middleware::map_response(security_headers))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The checks before a guarded route; `GET /` without a session gets a
/// page with the way to log in, the API a JSON error.
async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.auth.check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(f) if f.status == StatusCode::UNAUTHORIZED && req.uri().path() == "/" => (
            StatusCode::UNAUTHORIZED,
            Html(login_html("Log in to use the console.")),
        )
            .into_response(),
        Err(f) => f.into_response(),
    }
}

async fn not_found(req: Request) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such page: {}", req.uri().path()),
    )
}

async fn page() -> Response {
    no_store(Html(assets::page()).into_response())
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::get(&name) {
        Some(a) => no_store(
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                )],
                a.body,
            )
                .into_response(),
        ),
        None => ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no asset named {name:?}"),
        )
        .into_response(),
    }
}

/// Headers on every response: the page runs only its own files, talks only
/// to its own origin, and cannot be framed by another site (a jog button
/// under a transparent frame would be clicked for the other site).
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not no-referrer: under it Chromium sends `Origin: null` with the
    // login form's POST, which the Origin check must refuse; same-origin
    // names the console to itself and nothing to other sites.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// The page and its files change with the binary: never from a stale cache.
fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn api_meta(State(st): State<AppState>) -> Json<Value> {
    Json(meta::meta(st.auth.required()))
}

/// One control-socket request; the daemon's reply as it is (200 whether it
/// says ok or not).
async fn api_call(
    State(st): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiFailure> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiFailure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiFailure::bad("bad_request", format!("cannot read the request: {e}"))
        }
    })?;
    let request = checked_request(&body)?;
    Ok(Json(st.link.call(request).await?))
}

/// The request object a browser may send: JSON, an object, a known command
/// other than `events`.
pub fn checked_request(body: &[u8]) -> Result<Map<String, Value>, ApiFailure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiFailure::bad("bad_json", format!("the request is not valid JSON: {e}")))?;
    let Value::Object(request) = value else {
        return Err(ApiFailure::bad(
            "bad_request",
            format!(
                "the request must be a JSON object such as {{\"cmd\":\"status\"}}, not {value}"
            ),
        ));
    };
    let cmd = match request.get("cmd") {
        Some(Value::String(c)) => c.as_str(),
        Some(other) => {
            return Err(ApiFailure::bad(
                "bad_request",
                format!("field `cmd` must be a command name (a string), not {other}"),
            ))
        }
        None => {
            return Err(ApiFailure::bad(
                "bad_request",
                "field `cmd` is required (a command name such as \"status\")",
            ))
        }
    };
    let allowed = meta::allowed_commands();
    if cmd == "events" {
        return Err(ApiFailure::bad(
            "not_allowed",
            "`events` is not a request here: the page follows the events at /api/events",
        ));
    }
    if !allowed.contains(&cmd) {
        return Err(ApiFailure::bad(
            "unknown_command",
            format!("unknown command {cmd:?}; known: {}", allowed.join(", ")),
        ));
    }
    Ok(request)
}

/// The events as Server-Sent Events: first `hello` (or `link` when the
/// daemon is away), then whatever the hub publishes, until the console
/// stops or the browser leaves.
async fn api_events(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (first, rx) = st.hub.join().await;
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        let m = match rx.recv().await {
            Ok(m) => m,
            Err(RecvError::Lagged(n)) => Arc::new(Message::new(
                "lagged",
                serde_json::json!({"missed": n}).to_string(),
            )),
            Err(RecvError::Closed) => return None,
        };
        Some((m, rx))
    });
    let stop = st.hub.stopping();
    let stream = futures::stream::once(async move { Arc::new(first) })
        .chain(rest)
        .map(|m| Ok(Event::default().event(m.event).data(&*m.data)))
        .take_until(async move { stop.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The login form's fields.
#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_page(State(st): State<AppState>) -> Response {
    if !st.auth.required() {
        return Redirect::to("/").into_response();
    }
    Html(login_html("Enter the console's token.")).into_response()
}

async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Err(f) = st.auth.check_origin(&headers) {
        return f.into_response();
    }
    let Ok(Form(form)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            Html(login_html("The form needs a field named token.")),
        )
            .into_response();
    };
    match st.auth.login(form.token.trim()) {
        Some(cookie) => match HeaderValue::from_str(&cookie) {
            Ok(v) => {
                let mut r = Redirect::to("/").into_response();
                r.headers_mut().insert(header::SET_COOKIE, v);
                r
            }
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        None if !st.auth.required() => Redirect::to("/").into_response(),
        None => {
            tracing::warn!("console: a login with a wrong token");
            (StatusCode::UNAUTHORIZED, Html(login_html("Wrong token."))).into_response()
        }
    }
}

fn login_html(note: &str) -> String {
    format!(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
<title>stringdriver console: log in</title>\
<body style=\"font-family:sans-serif;max-width:28em;margin:4em auto\">\
<h1>stringdriver console</h1><p id=note>{note}</p>\
<form method=post action=/login><label>Token <input id=token name=token type=password autocomplete=current-password autofocus></label> \
<button type=submit>Log in</button></form><p><a href=/login>/login</a></p></body></html>"
    )
}
