//! The operator console: `stringdriverd console`, a separate process that
//! serves one web page and a small JSON/SSE API to the browsers of the lab,
//! and talks to the daemon only through its control socket.
//!
//! # Invariants
//!
//! - **A client of the control socket, nothing more.** The console never
//!   opens a board, the spool, the feed or PostgreSQL; every request a
//!   browser makes is one control-socket request, so every move passes the
//!   motion gate exactly as `stringdriverctl`'s do, and the daemon's
//!   refusals reach the page verbatim.
//! - **It never holds up capture.** The daemon drops a control client that
//!   stops reading; the console reads its one `events` subscription
//!   continuously and fans it out to browsers through a bounded broadcast
//!   ring ([`hub`]): a slow browser misses lines (it is told how many), it
//!   never slows the console's reading nor the daemon.
//! - **Safe by default** ([`auth`]): loopback unless configured; any other
//!   address needs a token (a file or the systemd credential
//!   `console-token`, never the main configuration), then a session cookie
//!   (HttpOnly, SameSite=Strict); state changes are POSTs carrying a header
//!   a cross-site form cannot set, with the Origin checked when sent.
//!
//! The HTTP routes are in [`routes`]; the contract they implement is in
//! ARCHITECTURE.md (`console`).

pub mod assets;
pub mod auth;
pub mod daemon_link;
pub mod error;
pub mod hub;
pub mod meta;
pub mod options;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use options::{ConsoleOptions, OptionsError, Token};

/// A console bound to its address, not yet serving.
pub struct Console {
    listener: TcpListener,
    options: ConsoleOptions,
}

impl Console {
    /// Binds `options.listen` (port 0: any free port, see
    /// [`Console::local_addr`]).
    pub async fn bind(options: ConsoleOptions) -> Result<Console, OptionsError> {
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|cause| OptionsError::Bind {
                    addr: options.listen,
                    cause,
                })?;
        Ok(Console { listener, options })
    }

    /// The address really listened on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The page's URL (`http://ADDR:PORT/`).
    pub fn url(&self) -> std::io::Result<String> {
        Ok(format!("http://{}/", self.local_addr()?))
    }

    /// Serves until `stop` is cancelled: the control-socket link (events and
    /// status polling) runs beside the HTTP server and ends with it.
    pub async fn serve(self, stop: CancellationToken) -> std::io::Result<()> {
        let addr = self.local_addr()?;
        let hub = hub::Hub::start(self.options.socket.clone(), stop.clone());
        let state = routes::AppState {
            link: daemon_link::DaemonLink::new(self.options.socket.clone()),
            hub: hub.clone(),
            auth: Arc::new(auth::Auth::new(self.options.token.clone())),
        };
        let app = routes::router(state);
        tracing::info!(%addr, socket = %self.options.socket.display(), "console serving");
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    }
}
