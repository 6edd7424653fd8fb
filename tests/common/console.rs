//! The operator console in tests: a simulated machine with its daemon
//! in-process and a console (`stringdriverd::console`) on a free port of a
//! loopback address, and a small HTTP client for it — requests, the login
//! cookie, and the Server-Sent Events read as data (event name and JSON),
//! never matched as text. The HTTP and browser tests and the console
//! benchmark share them; they include it with `#[path]` (beside `mod
//! common`), so that the other test binaries do not build an HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use stringdriverd::console::{Console, ConsoleOptions, Token};
use tokio_util::sync::CancellationToken;

use crate::common::machine::{started, InProcess, MachineOptions, SimMachine, WAIT};

/// A token for the tests' network listeners (long enough to be accepted).
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A console serving in this process, stopped by [`ServedConsole::stop`].
pub struct ServedConsole {
    /// `http://ADDR:PORT` (no trailing slash).
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServedConsole {
    /// A console for the control socket `socket`, listening on `ip` (port
    /// chosen by the OS), with `token` if given.
    pub async fn start(socket: PathBuf, ip: &str, token: Option<&str>) -> ServedConsole {
        let options = ConsoleOptions {
            listen: format!("{ip}:0").parse().expect("address"),
            socket,
            token: token.map(|t| Token::new(t).expect("token")),
        };
        let options = stringdriverd::console::options::checked(options).expect("safe options");
        let console = Console::bind(options).await.expect("console binds");
        let addr = console.local_addr().expect("address");
        let stop = CancellationToken::new();
        let task = tokio::spawn(console.serve(stop.clone()));
        ServedConsole {
            url: format!("http://{addr}"),
            addr,
            stop,
            task,
        }
    }

    /// Stops it and checks it ended without error, within 5 s.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the console stops within 5 s")
            .expect("join")
            .expect("the console ends without error");
    }
}

/// A simulated machine, its daemon (every counter set to `machine::pose`)
/// and a console on it.
pub struct ConsoleRig {
    /// The simulated boards, feed and configuration.
    pub machine: SimMachine,
    /// The daemon.
    pub run: InProcess,
    /// The console.
    pub console: ServedConsole,
    /// The console's URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub url: String,
}

impl ConsoleRig {
    /// The daemon on `options` and a console on 127.0.0.1 without a token.
    pub async fn start(options: MachineOptions) -> ConsoleRig {
        ConsoleRig::start_on(options, "127.0.0.1", None).await
    }

    /// As [`ConsoleRig::start`], the console on 127.0.0.2 (a network
    /// listener for the console's rules) with `token`: a login is needed.
    pub async fn start_with_token(options: MachineOptions, token: &str) -> ConsoleRig {
        ConsoleRig::start_on(options, "127.0.0.2", Some(token)).await
    }

    async fn start_on(options: MachineOptions, ip: &str, token: Option<&str>) -> ConsoleRig {
        let (machine, run) = started(options).await;
        let console = ServedConsole::start(machine.socket(), ip, token).await;
        ConsoleRig {
            url: console.url.clone(),
            machine,
            run,
            console,
        }
    }

    /// The daemon's control socket.
    pub fn socket(&self) -> PathBuf {
        self.machine.socket()
    }

    /// A client of the console (no cookie yet).
    pub fn http(&self) -> Http {
        Http::new(&self.url)
    }

    /// Stops the console, then the daemon.
    pub async fn stop(self) {
        self.console.stop().await;
        self.run.stop().await;
    }
}

/// One HTTP reply, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (fails the test when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Fails the test unless this is the console's error `kind` with `status`.
    pub fn assert_error(&self, status: u16, kind: &str) {
        assert_eq!(
            (self.status, self.error_kind().as_str()),
            (status, kind),
            "{}",
            self.text()
        );
    }

    /// The console's error kind (`{"error":{"kind"}}`).
    pub fn error_kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("no error kind in {}", self.text()))
            .to_string()
    }
}

/// A client of one console: keeps the session cookie of its login.
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    /// `sd_console=...` once logged in.
    pub cookie: Option<String>,
}

impl Http {
    /// A client of the console at `base` (`http://ADDR:PORT`).
    pub fn new(base: &str) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_string(),
            cookie: None,
        }
    }

    /// Sends a request built from its parts and reads the reply's head.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> hyper::Response<Incoming> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request");
        tokio::time::timeout(WAIT, self.client.request(req))
            .await
            .expect("a reply in time")
            .expect("the console answers")
    }

    /// A request, its reply read whole.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let r = self.send(method, path, headers, body).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = tokio::time::timeout(WAIT, r.into_body().collect())
            .await
            .expect("the body in time")
            .expect("the body")
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"").await
    }

    /// POST `body` to `path` as the page does: JSON, with the CSRF header.
    pub async fn post_json(&self, path: &str, body: &[u8]) -> Reply {
        self.request(
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("x-stringdriver-console", "1"),
            ],
            body,
        )
        .await
    }

    /// `/api/call` with `request`: the reply (the daemon's, or the console's error).
    pub async fn call(&self, request: Value) -> Reply {
        self.post_json("/api/call", request.to_string().as_bytes())
            .await
    }

    /// The `result` of a call that must succeed.
    pub async fn ok(&self, request: Value) -> Value {
        let r = self.call(request.clone()).await;
        assert_eq!(r.status, 200, "{request} -> {}", r.text());
        let v = r.json();
        assert_eq!(v["ok"], json!(true), "{request} -> {v}");
        v["result"].clone()
    }

    /// The daemon's refusal of `request`, passed on by the console (HTTP
    /// 200, `ok` false) with a message naming `needle`: the reply.
    pub async fn refused(&self, request: Value, needle: &str) -> Value {
        let r = self.call(request.clone()).await;
        assert_eq!(r.status, 200, "{request} -> {}", r.text());
        let v = r.json();
        assert_eq!(v["ok"], json!(false), "{request} -> {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{request} -> {v}");
        v
    }

    /// Logs in with `token` through the form; keeps the cookie on success.
    pub async fn login(&mut self, token: &str) -> Reply {
        let body = format!("token={token}");
        let r = self
            .request(
                "POST",
                "/login",
                &[("content-type", "application/x-www-form-urlencoded")],
                body.as_bytes(),
            )
            .await;
        if let Some(set) = r.headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            // Only the name=value pair goes back, as a browser sends it.
            self.cookie = set.split(';').next().map(str::to_string);
        }
        r
    }

    /// Opens `/api/events`.
    pub async fn events(&self) -> EventStream {
        let r = self.send("GET", "/api/events", &[], b"").await;
        assert_eq!(r.status().as_u16(), 200, "/api/events");
        EventStream {
            body: r.into_body(),
            buf: Vec::new(),
        }
    }
}

/// A Server-Sent Events stream, parsed into (event name, JSON data).
pub struct EventStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event (comments and keep-alives skipped); fails the test
    /// after [`WAIT`] or when the stream ends.
    pub async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(WAIT, self.next_event())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
    }

    /// The next event, or `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                if let Some(ev) = parse_block(&block[..end.0]) {
                    return Some(ev);
                }
                continue;
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// Skips events until `pred(name, data)` holds and returns that one.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&str, &Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (name, data) = tokio::time::timeout(left, self.next_event())
                .await
                .unwrap_or_else(|_| panic!("waited for {what}"))
                .unwrap_or_else(|| panic!("the stream ended before {what}"));
            if pred(&name, &data) {
                return data;
            }
        }
    }
}

/// The end of the first event block: (where its text ends, where the next begins).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    buf.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2))
}

/// One event block: its `event:` name (default `message`) and its `data:`
/// lines joined, parsed as JSON; `None` for a comment-only block.
fn parse_block(block: &[u8]) -> Option<(String, Value)> {
    let text = String::from_utf8_lossy(block);
    let mut name = "message".to_string();
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim_start().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() {
        return None;
    }
    let joined = data.join("\n");
    let value = serde_json::from_str(&joined)
        .unwrap_or_else(|e| panic!("event {name}: data is not JSON ({e}): {joined}"));
    Some((name, value))
}
