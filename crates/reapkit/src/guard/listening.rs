//! Listening sockets and who holds them, from `/proc`: a process's socket descriptors
//! (`socket:[inode]` links) against its network namespace's tables (`/proc/<pid>/net/tcp`,
//! `tcp6`, `unix`).
//!
//! This is how reapkit proves that *the guarded tree* listens (a log line can lie about the
//! port, and a leftover server of an earlier run can answer a readiness check meant for the new
//! one), and how reports name the ports a leftover holds. Everything here reads `/proc` only:
//! no connection is made to the port.
//!
//! The tables are read with a size cap ([`MAX_TABLE_BYTES`]): a machine with more sockets than
//! that is read up to the cap, and a socket past it is not seen (reported as not listening).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::os::fd_snapshot::{FdKind, FdSnapshot};
use crate::os::sockets;

pub use crate::os::sockets::MAX_TABLE_BYTES;

/// A listening socket, with the process that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Listener {
    /// A process with the socket open (the first found, when several share it).
    pub pid: i32,
    #[serde(flatten)]
    pub addr: ListenAddr,
}

/// Where a socket listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ListenAddr {
    /// A TCP socket in `LISTEN` state, IPv4 or IPv6.
    Tcp { addr: SocketAddr },
    /// A listening Unix stream socket: its path, `@name` for an abstract one, empty if unnamed.
    Unix { path: String },
}

impl ListenAddr {
    /// The TCP port, for a TCP listener.
    pub fn port(&self) -> Option<u16> {
        match self {
            ListenAddr::Tcp { addr } => Some(addr.port()),
            ListenAddr::Unix { .. } => None,
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp { addr } => write!(f, "tcp {addr}"),
            ListenAddr::Unix { path } => write!(f, "unix {}", crate::evidence::escape::evidence(path)),
        }
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.addr, self.pid)
    }
}

/// What a guard waits for before its `spawn` returns: its tree listening
/// ([`ProcessBuilder::listen`](crate::ProcessBuilder::listen)).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Listen {
    /// A TCP socket on this port, on any address; `Tcp(0)`: on any port (the server chose one,
    /// whatever it logs).
    Tcp(u16),
    /// A Unix stream socket bound to this path.
    Unix(std::path::PathBuf),
}

impl Listen {
    /// Whether a socket listening on `addr` is the one asked for.
    pub fn matches(&self, addr: &ListenAddr) -> bool {
        match (self, addr) {
            (Listen::Tcp(0), ListenAddr::Tcp { .. }) => true,
            (Listen::Tcp(port), ListenAddr::Tcp { addr }) => addr.port() == *port,
            (Listen::Unix(want), ListenAddr::Unix { path }) => std::path::Path::new(path) == want,
            _ => false,
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(0) => write!(f, "a TCP port"),
            Listen::Tcp(port) => write!(f, "TCP port {port}"),
            Listen::Unix(path) => write!(f, "the Unix socket {}", crate::evidence::escape::evidence(&path.to_string_lossy())),
        }
    }
}

/// `listening on tcp 127.0.0.1:8080, unix /tmp/s`, if `listeners` has any: how reports name
/// the ports a leftover holds.
pub fn words(listeners: &[Listener]) -> Option<String> {
    (!listeners.is_empty()).then(|| {
        let on: Vec<String> = listeners.iter().map(|l| l.addr.to_string()).collect();
        format!("listening on {}", on.join(", "))
    })
}

/// The listening sockets that `pids` hold, each once, in the order of `pids` then address.
/// A pid that has exited or whose descriptors this user may not read holds none.
pub fn of(pids: &[i32]) -> Vec<Listener> {
    let mut tables: HashMap<u64, Tables> = HashMap::new();
    let mut out: Vec<Listener> = Vec::new();
    for &pid in pids {
        let inodes = socket_inodes(pid);
        if inodes.is_empty() {
            continue;
        }
        let Some(netns) = netns_of(pid) else { continue };
        let tables = tables.entry(netns).or_insert_with(|| Tables::read(pid));
        let mut found: Vec<ListenAddr> = inodes.iter().filter_map(|i| tables.listening.get(i).cloned()).collect();
        found.sort_by_key(ToString::to_string);
        for addr in found {
            if !out.iter().any(|l| l.addr == addr) {
                out.push(Listener { pid, addr });
            }
        }
    }
    out
}

/// The processes of this machine's view (every `/proc` pid this user can read) that hold a
/// TCP socket listening on `port` in the network namespace of `netns_pid`: who holds a port.
/// Costs a walk of every process's descriptors: for error paths, not for polling.
pub fn holders_of_port(port: u16, netns_pid: i32) -> Vec<Listener> {
    let tables = Tables::read(netns_pid);
    let wanted: HashMap<u64, &ListenAddr> =
        tables.listening.iter().filter(|(_, a)| a.port() == Some(port)).map(|(i, a)| (*i, a)).collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let netns = netns_of(netns_pid);
    let mut out = Vec::new();
    for pid in crate::os::procfs::pids() {
        if netns_of(pid) != netns {
            continue;
        }
        for inode in socket_inodes(pid) {
            if let Some(addr) = wanted.get(&inode) {
                if !out.iter().any(|l: &Listener| &l.addr == *addr) {
                    out.push(Listener { pid, addr: (*addr).clone() });
                }
            }
        }
    }
    out
}

/// The inodes of `pid`'s socket descriptors.
fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(snapshot) = FdSnapshot::of(pid) else { return Vec::new() };
    snapshot
        .fds()
        .iter()
        .filter(|fd| fd.kind == FdKind::Socket)
        .filter_map(|fd| fd.target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// The inode of `pid`'s network namespace.
fn netns_of(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

/// The listening sockets of one network namespace, by inode.
struct Tables {
    listening: HashMap<u64, ListenAddr>,
}

impl Tables {
    /// Read through `pid`'s view (`/proc/<pid>/net` is its namespace's).
    fn read(pid: i32) -> Tables {
        let tcp = sockets::inet_rows(pid, "tcp")
            .filter(sockets::InetRow::is_listening)
            .map(|row| (row.inode, ListenAddr::Tcp { addr: row.local }));
        let unix = sockets::unix_rows(pid).filter(|row| row.listening).map(|row| (row.inode, ListenAddr::Unix { path: row.path }));
        Tables { listening: tcp.chain(unix).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_a_socket_of_this_process_listens_on_and_its_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        let ours = of(&[me]);
        assert!(ours.iter().any(|l| l.pid == me && l.addr.port() == Some(port)), "{ours:?}");
        let holders = holders_of_port(port, me);
        assert_eq!(holders.len(), 1, "{holders:?}");
        drop(listener);
        assert!(!of(&[me]).iter().any(|l| l.addr.port() == Some(port)));
    }
}
