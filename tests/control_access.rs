//! Who may use the control socket, with real users: the daemon in-process
//! (as root) on simulated boards, `stringdriverctl` as a real process
//! switched by `setpriv` to `nobody` with or without a supplementary group.
//!
//! Under the unit (`PrivateUsers=yes`, `ProtectProc=invisible`) a group
//! member used to be refused because the daemon read the peer's groups from
//! `/proc`; it now takes them from the socket (`SO_PEERGROUPS`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::machine::{InProcess, MachineOptions, SimMachine};

const HOST: &str = "sd-access";
/// `nobody`: neither root nor the daemon's user.
const NOBODY: &str = "65534";

fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test must run as root (it switches users with setpriv)");
    }
}

/// The gid of a group that exists on every Debian system and is not
/// `nobody`'s own.
fn dialout() -> u32 {
    nix::unistd::Group::from_name("dialout")
        .expect("group lookup")
        .expect("group dialout exists")
        .gid
        .as_raw()
}

/// `stringdriverctl --json status` as `nobody`, with `groups` as its only
/// supplementary groups.
fn ctl_as_nobody(socket: &Path, groups: Option<u32>) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", NOBODY, "--regid", NOBODY]);
    match groups {
        Some(g) => c.arg(format!("--groups={g}")),
        None => c.arg("--clear-groups"),
    };
    c.arg("--")
        .arg(env!("CARGO_BIN_EXE_stringdriverctl"))
        .arg("--socket")
        .arg(socket)
        .args(["--json", "status"])
        .output()
        .expect("setpriv runs")
}

/// A machine whose socket is open to everyone at the file level ("0666"), so
/// that only the daemon's own check decides, with `control.group = dialout`.
fn open_machine() -> SimMachine {
    require_root();
    let machine = SimMachine::start(MachineOptions::new(HOST));
    // [control] is the configuration's last table (no sensors, no compat).
    let mut text = std::fs::read_to_string(&machine.cfg_path).expect("config");
    text.push_str("group = \"dialout\"\nmode = \"0666\"\n");
    std::fs::write(&machine.cfg_path, text).expect("config written");
    // nobody must be able to reach the socket in the test's directory.
    std::fs::set_permissions(machine.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    machine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_by_supplementary_group_only_is_served_and_a_stranger_is_refused() {
    let machine = open_machine();
    let daemon = InProcess::start(&machine).await;
    let socket = machine.socket();
    let gid = dialout();

    let member = {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || ctl_as_nobody(&socket, Some(gid)))
            .await
            .expect("join")
    };
    let stranger = {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || ctl_as_nobody(&socket, None))
            .await
            .expect("join")
    };
    daemon.stop().await;

    let err = String::from_utf8_lossy(&member.stderr);
    assert!(member.status.success(), "member refused: {err}");
    let status: serde_json::Value =
        serde_json::from_slice(&member.stdout).expect("status --json is JSON");
    assert_eq!(status["boards"][0]["name"], "carriage", "{status}");

    // Refused at connection: exit 2 like any socket the client cannot use,
    // naming the daemon's reason (as JSON: the client was asked for --json).
    let e: serde_json::Value = serde_json::from_slice(&stranger.stdout).expect("a JSON error");
    assert_eq!(stranger.status.code(), Some(2), "{e}");
    assert_eq!(e["error"]["kind"], "forbidden", "{e}");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("refused the connection"), "{msg}");
}

/// Without `[control] group` the socket has the daemon's own group (the
/// unit's `Group=stringdriver`), and its members may use it: they were
/// refused under the unit ("forbidden", uid 65534) though the file's mode let
/// them in. The daemon here runs as root, so its group is gid 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_control_group_members_of_the_daemons_own_group_are_served() {
    require_root();
    let machine = SimMachine::start(MachineOptions::new(HOST));
    let mut text = std::fs::read_to_string(&machine.cfg_path).expect("config");
    text.push_str("mode = \"0666\"\n");
    std::fs::write(&machine.cfg_path, text).expect("config written");
    std::fs::set_permissions(machine.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let daemon = InProcess::start(&machine).await;
    let socket = machine.socket();
    let own_gid = nix::unistd::getegid().as_raw();
    let (member, stranger) = tokio::task::spawn_blocking(move || {
        (
            ctl_as_nobody(&socket, Some(own_gid)),
            ctl_as_nobody(&socket, None),
        )
    })
    .await
    .expect("join");
    daemon.stop().await;
    let err = String::from_utf8_lossy(&member.stderr);
    assert!(
        member.status.success(),
        "member of the daemon's group refused: {err}"
    );
    // --json: the refusal is a JSON error on stdout.
    let e: serde_json::Value = serde_json::from_slice(&stranger.stdout).expect("a JSON error");
    assert_eq!(stranger.status.code(), Some(2), "{e}");
    assert_eq!(e["error"]["kind"], "forbidden", "{e}");
}

#[test]
fn permission_error_on_the_socket_says_who_may_use_it() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.path().join("control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).expect("chmod");

    let o = ctl_as_nobody(&socket, None);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON error");
    assert_eq!(e["error"]["kind"], "unreachable", "{e}");
    let err = e["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("ermission denied"), "{err}");
    assert!(err.contains("usermod -aG stringdriver"), "{err}");
    assert!(err.contains("new login session"), "{err}");
    assert!(!err.contains("is the daemon running"), "{err}");
}
