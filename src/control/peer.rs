//! Who is on the other end of a control connection: the peer's groups as
//! the kernel recorded them at `connect()` (`SO_PEERGROUPS`).
//!
//! Not `/proc/<pid>/status`: under the unit's `ProtectProc=invisible` other
//! users' processes are hidden, and under `PrivateUsers=yes` the kernel
//! translates ids into the daemon's user namespace only through the socket
//! options (an unmapped id reads as the overflow id 65534, a mapped group —
//! the daemon's own — as itself).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::libc;

/// `SO_PEERGROUPS` (Linux 4.13): 59 in asm-generic and on every
/// architecture the daemon runs on (libc does not export it for glibc).
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const SO_PEERGROUPS: libc::c_int = 59;

/// The largest group list the kernel hands out (`NGROUPS_MAX`).
const MAX_GROUPS: usize = 65536;

/// The supplementary groups of the process that connected on `fd`, in this
/// process's user namespace.
pub fn peer_groups(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    let size = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    // The list is fixed at connect(): one retry with the size the kernel
    // reported is enough; the loop bound only guards against a surprise.
    for _ in 0..3 {
        let mut len = libc::socklen_t::try_from(groups.len() * size)
            .map_err(|_| std::io::Error::other("group buffer too large"))?;
        // SAFETY: `groups` is valid for writes of `len` bytes and outlives
        // the call; `fd` is an open socket borrowed for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if rc == 0 {
            groups.truncate(len.min(groups.len() * size) / size);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` says how large it must be.
        if error.raw_os_error() == Some(libc::ERANGE)
            && len > groups.len() * size
            && len / size <= MAX_GROUPS
        {
            groups.resize(len / size, 0);
            continue;
        }
        return Err(error);
    }
    Err(std::io::Error::other(
        "the peer's group list changed size while it was read",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn peer_groups_of_a_socketpair_are_our_own_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut got = peer_groups(a.as_fd()).expect("SO_PEERGROUPS");
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .expect("getgroups")
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        ours.sort_unstable();
        assert_eq!(got, ours);
    }
}
