//! What a console runs with: the address, the daemon's control socket and
//! the login token, from the configuration's `[console]` and `[control]`
//! sections and the command line, with the rule that only a loopback
//! listener may go without a token.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::Config;

/// The systemd credential holding the token (`LoadCredential=console-token:...`).
pub const CREDENTIAL: &str = "console-token";

/// Shortest token accepted: a guessable token on a network listener is no
/// protection, and the login is the only gate before the motion gate.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// A non-loopback listener without a token.
    #[error(
        "the console listens on {listen}, which is not a loopback address: a token is required \
         (console.token_file, --token-file, or the systemd credential `{CREDENTIAL}`); \
         listen on 127.0.0.1 or [::1] to go without one"
    )]
    TokenRequired {
        /// The address asked for.
        listen: SocketAddr,
    },
    /// The token file cannot be used.
    #[error("console token {}: {reason}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
}

/// The login token. Its Debug form hides it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from its text; refused when shorter than [`MIN_TOKEN_LEN`]
    /// or with white space in it (a copy-paste accident).
    pub fn new(text: &str) -> Result<Token, String> {
        if text.chars().count() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token has {} characters; at least {MIN_TOKEN_LEN} are required",
                text.chars().count()
            ));
        }
        if text.chars().any(char::is_whitespace) {
            return Err("the token contains white space".into());
        }
        Ok(Token(text.into()))
    }

    /// Whether `given` is the token, in time independent of where they
    /// differ (subtle's constant-time comparison; only a length mismatch
    /// returns early, and the length is no secret worth a timing attack).
    pub fn matches(&self, given: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// Everything a console needs to run.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// The login token; `None` only on a loopback listener.
    pub token: Option<Token>,
}

/// Whether `addr` is one the console may serve without a token: 127.0.0.1
/// and ::1 exactly. Other loopback addresses (127.0.0.2) and every other
/// address count as network listeners: a rule with no exceptions to learn.
pub fn is_loopback_default(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(ip) => ip == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(ip) => ip == std::net::Ipv6Addr::LOCALHOST,
    }
}

/// Reads a token file (one line; see [`crate::config::read_secret`]).
pub fn read_token(path: &Path) -> Result<Token, OptionsError> {
    let bad = |reason: String| OptionsError::Token {
        path: path.to_path_buf(),
        reason,
    };
    let text = crate::config::read_secret(path).map_err(|e| bad(e.to_string()))?;
    Token::new(&text).map_err(bad)
}

/// The token in force: `--token-file`, else `console.token_file`, else the
/// systemd credential in `credentials_dir` (`$CREDENTIALS_DIRECTORY`) when
/// the unit loaded one; `None` when there is none.
pub fn find_token(
    flag: Option<&Path>,
    configured: Option<&Path>,
    credentials_dir: Option<&Path>,
) -> Result<Option<Token>, OptionsError> {
    if let Some(p) = flag.or(configured) {
        return read_token(p).map(Some);
    }
    match credentials_dir.map(|d| d.join(CREDENTIAL)) {
        Some(p) if p.exists() => read_token(&p).map(Some),
        _ => Ok(None),
    }
}

/// The options of `stringdriverd console`: the file's `[console]` and
/// `[control] socket`, overridden by the command line.
pub fn resolve(
    cfg: &Config,
    listen: Option<SocketAddr>,
    socket: Option<PathBuf>,
    token_file: Option<PathBuf>,
    credentials_dir: Option<PathBuf>,
) -> Result<ConsoleOptions, OptionsError> {
    let listen = listen.unwrap_or(cfg.console.listen);
    let token = find_token(
        token_file.as_deref(),
        cfg.console.token_file.as_deref(),
        credentials_dir.as_deref(),
    )?;
    checked(ConsoleOptions {
        listen,
        socket: socket.unwrap_or_else(|| cfg.control.socket.clone()),
        token,
    })
}

/// `options` if they are safe: a token wherever the listener is not the
/// loopback default.
pub fn checked(options: ConsoleOptions) -> Result<ConsoleOptions, OptionsError> {
    if options.token.is_none() && !is_loopback_default(&options.listen) {
        return Err(OptionsError::TokenRequired {
            listen: options.listen,
        });
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_127_0_0_1_and_ipv6_loopback_go_without_a_token() {
        for a in ["127.0.0.1:7125", "[::1]:80", "127.0.0.1:0"] {
            assert!(is_loopback_default(&a.parse().expect("addr")), "{a}");
        }
        for a in [
            "127.0.0.2:7125",
            "0.0.0.0:7125",
            "[::]:7125",
            "192.168.1.5:80",
        ] {
            assert!(!is_loopback_default(&a.parse().expect("addr")), "{a}");
            let e = checked(ConsoleOptions {
                listen: a.parse().expect("addr"),
                socket: "/x".into(),
                token: None,
            })
            .unwrap_err();
            assert!(e.to_string().contains("token is required"), "{e}");
        }
    }

    #[test]
    fn tokens_are_checked_and_compared_whole() {
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
        assert!(Token::new("has a space in it ok").is_err());
        let t = Token::new("0123456789abcdef").expect("token");
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches("0123456789abcdef0"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn the_flag_wins_then_the_file_then_the_credential() {
        let d = tempfile::tempdir().expect("dir");
        let write = |name: &str, text: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let flag = write("flag", "flag-token-0123456789\n");
        let file = write("file", "file-token-0123456789\n");
        std::fs::create_dir(d.path().join("creds")).expect("dir");
        write("creds/console-token", "cred-token-0123456789");
        let creds = d.path().join("creds");
        let got = |f: Option<&Path>, c: Option<&Path>| {
            find_token(f, c, Some(&creds))
                .expect("token")
                .expect("some")
        };
        assert!(got(Some(&flag), Some(&file)).matches("flag-token-0123456789"));
        assert!(got(None, Some(&file)).matches("file-token-0123456789"));
        assert!(got(None, None).matches("cred-token-0123456789"));
        assert!(find_token(None, None, Some(d.path()))
            .expect("ok")
            .is_none());
        let e = find_token(Some(&d.path().join("missing")), None, None).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let short = write("short", "abc\n");
        let e = find_token(Some(&short), None, None).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
    }
}
