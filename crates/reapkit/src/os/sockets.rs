//! What a socket or a pipe of a process is, in the words a user knows it by: `TCP
//! 127.0.0.1:39459, listening`, not `socket:[116278]`.
//!
//! Linux only (the portable backend reads no `/proc`, and says less). Read from the process's
//! own network namespace (`/proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}`)
//! and, for a pipe, from the FD tables of the other processes that hold it. Only a report pays
//! for this (a leak found), never a check; every table is read to at most
//! [`MAX_TABLE_BYTES`].

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::os::fd_snapshot::FdSnapshot;
use crate::os::procfs;

/// The most read of one `/proc/<pid>/net/*` table (about 50,000 TCP sockets): a socket past
/// it is not seen.
pub const MAX_TABLE_BYTES: u64 = 8 << 20;

/// The most processes a pipe's other holders are looked for in.
const MAX_PROCESSES: usize = 20_000;

/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;
/// `__SO_ACCEPTCON` in `/proc/net/unix`'s flags: a listening socket.
const UNIX_ACCEPTCON: u32 = 0x0001_0000;

/// One row of `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InetRow {
    pub(crate) inode: u64,
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
    /// The kernel's TCP state number (`0A` is `LISTEN`); for UDP, `07` unconnected.
    pub(crate) state: u8,
}

impl InetRow {
    pub(crate) fn is_listening(&self) -> bool {
        self.state == TCP_LISTEN
    }

    fn is_connected(&self) -> bool {
        !self.peer.ip().is_unspecified() || self.peer.port() != 0
    }
}

/// One row of `/proc/net/unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnixRow {
    pub(crate) inode: u64,
    pub(crate) listening: bool,
    connected: bool,
    /// `stream`, `datagram`, `seqpacket`.
    kind: &'static str,
    /// Its path, `@name` for an abstract one, empty if unnamed.
    pub(crate) path: String,
}

/// The rows of `pid`'s network namespace's `tcp` and `tcp6` tables (or `udp`, `udp6`).
pub(crate) fn inet_rows(pid: i32, protocol: &str) -> impl Iterator<Item = InetRow> {
    let v4 = read_table(pid, protocol);
    let v6 = read_table(pid, &format!("{protocol}6"));
    [v4, v6].into_iter().flat_map(|text| text.lines().skip(1).filter_map(parse_inet).collect::<Vec<_>>())
}

/// The rows of `pid`'s network namespace's `unix` table.
pub(crate) fn unix_rows(pid: i32) -> impl Iterator<Item = UnixRow> {
    read_table(pid, "unix").lines().skip(1).filter_map(parse_unix).collect::<Vec<_>>().into_iter()
}

/// What socket `inode` of process `pid` is, in a user's words (raw: a path or a command line
/// is the caller's to escape) — `TCP 127.0.0.1:39459,
/// listening`, `TCP 127.0.0.1:5000 -> 127.0.0.1:39459, established`, `UDP [::1]:53, bound`,
/// `Unix stream /tmp/app.sock, listening` — or `None` if it is in none of the tables (a netlink
/// or packet socket, or closed since).
pub fn describe_socket(pid: i32, inode: u64) -> Option<String> {
    if !crate::os::PROC_TABLE {
        return None;
    }
    for (protocol, name) in [("tcp", "TCP"), ("udp", "UDP")] {
        if let Some(row) = inet_rows(pid, protocol).find(|r| r.inode == inode) {
            return Some(describe_inet(name, &row));
        }
    }
    unix_rows(pid).find(|r| r.inode == inode).map(|row| {
        let path = if row.path.is_empty() { "(unnamed)" } else { row.path.as_str() };
        let state = match (row.listening, row.connected) {
            (true, _) => "listening",
            (_, true) => "connected",
            _ => "unconnected",
        };
        format!("Unix {} {path}, {state}", row.kind)
    })
}

/// The other processes holding some pipes of a process, found in one walk of `/proc`: what
/// the other end of a leaked pipe is (a child the test started, usually).
#[derive(Debug, Default)]
pub struct PipeHolders {
    /// Pipe target (`pipe:[1234]`) → `pid 812 \`node server.js\`` for each other holder.
    holders: HashMap<String, Vec<String>>,
}

impl PipeHolders {
    /// The processes other than `pid` that hold any pipe of `targets` (descriptor targets; all
    /// but pipes are skipped). No walk at all if there is no pipe among them.
    pub fn find<'a>(pid: i32, targets: impl Iterator<Item = &'a str>) -> PipeHolders {
        let mut holders: HashMap<String, Vec<String>> =
            targets.filter(|t| t.starts_with("pipe:[")).map(|t| (t.to_owned(), Vec::new())).collect();
        if holders.is_empty() || !crate::os::PROC_TABLE {
            return PipeHolders::default();
        }
        for other in procfs::pids().filter(|&other| other != pid).take(MAX_PROCESSES) {
            let Ok(snapshot) = FdSnapshot::of(other) else { continue };
            // Each pipe it holds, once, however many descriptors it has on it.
            let mut held: Vec<&str> =
                snapshot.fds().iter().map(|fd| fd.target.as_str()).filter(|t| holders.contains_key(*t)).collect();
            held.sort_unstable();
            held.dedup();
            if held.is_empty() {
                continue;
            }
            let name = format!("pid {other} `{}`", procfs::cmdline(other));
            for target in held {
                holders.entry(target.to_owned()).or_default().push(name.clone());
            }
        }
        PipeHolders { holders }
    }

    /// What descriptor target `target` of process `pid` is, where more can be said than its
    /// kind: a socket's protocol, addresses and state; the other holders of a pipe.
    pub fn describe(&self, pid: i32, target: &str) -> Option<String> {
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')?.parse().ok()) {
            return describe_socket(pid, inode);
        }
        let holders = self.holders.get(target)?;
        Some(if holders.is_empty() {
            "a pipe no other process holds".to_owned()
        } else {
            format!("a pipe also held by {}", holders.join(", "))
        })
    }
}

/// `/proc/<pid>/net/<table>`, at most [`MAX_TABLE_BYTES`] of it; empty if it cannot be read.
fn read_table(pid: i32, table: &str) -> String {
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(format!("/proc/{pid}/net/{table}")) {
        let _ = file.take(MAX_TABLE_BYTES).read_to_string(&mut text);
    }
    text
}

fn describe_inet(protocol: &str, row: &InetRow) -> String {
    let state = match (protocol, row.state) {
        ("UDP", _) if row.is_connected() => "connected",
        ("UDP", _) => "bound",
        (_, TCP_LISTEN) => "listening",
        (_, 0x01) => "established",
        (_, 0x02) => "connecting",
        (_, 0x06) => "time-wait",
        (_, 0x08) => "closed by its peer (close-wait)",
        _ => "closing",
    };
    if row.is_connected() {
        format!("{protocol} {} -> {}, {state}", row.local, row.peer)
    } else {
        format!("{protocol} {}, {state}", row.local)
    }
}

/// One row of `/proc/net/tcp{,6}` (or `udp`).
///
/// `sl local_address rem_address st ... uid timeout inode`; an address is the kernel's raw
/// 32-bit words in hex, each in host byte order, then `:` and the port in hex, host order.
fn parse_inet(line: &str) -> Option<InetRow> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    Some(InetRow {
        local: parse_address(fields.get(1)?)?,
        peer: parse_address(fields.get(2)?)?,
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

fn parse_address(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if addr.len() % 8 != 0 {
        return None;
    }
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| addr.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()))
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, w) in bytes.chunks_exact_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// One row of `/proc/net/unix`: `Num RefCount Protocol Flags Type St Inode Path`; the path is
/// absent for an unnamed socket and starts with `@` for an abstract one.
fn parse_unix(line: &str) -> Option<UnixRow> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
    Some(UnixRow {
        listening: flags & UNIX_ACCEPTCON != 0,
        kind: match *fields.get(4)? {
            "0001" => "stream",
            "0002" => "datagram",
            "0005" => "seqpacket",
            _ => "socket",
        },
        // SS_CONNECTED.
        connected: *fields.get(5)? == "03",
        inode: fields.get(6)?.parse().ok()?,
        path: fields.get(7).map_or_else(String::new, |p| (*p).to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("its fd").ino()
    }

    #[test]
    fn parses_rows_and_refuses_garbage() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1";
        let row = parse_inet(v4).expect("a row");
        assert_eq!((row.inode, row.local, row.is_listening()), (4242, "127.0.0.1:8080".parse().unwrap(), true));
        assert!(!parse_inet(&v4.replace(" 0A ", " 01 ")).expect("a row").is_listening());
        let v6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A \
                  00000000:00000000 00:00000000 00000000     0        0 77 1";
        assert_eq!(parse_inet(v6).map(|r| (r.inode, r.local)), Some((77, "[::1]:80".parse().unwrap())));
        for hostile in ["", "0: zz:1 0 0A", "0: 0100007F:FFFFF 0 0A a b c d e f", "0: 0100007:0050 x 0A a b c d e 9"] {
            assert_eq!(parse_inet(hostile), None, "{hostile:?}");
        }
        let unix = parse_unix("0000000000000000: 00000002 00000000 00010000 0001 01 991 /tmp/x.sock").expect("a row");
        assert_eq!((unix.inode, unix.listening, unix.path.as_str()), (991, true, "/tmp/x.sock"));
        let connected = parse_unix("0000000000000000: 00000003 00000000 00000000 0001 03 992 /tmp/x.sock");
        assert!(connected.is_some_and(|r| !r.listening && r.connected));
        let unnamed = parse_unix("0000000000000000: 00000002 00000000 00010000 0001 01 993").expect("a row");
        assert_eq!((unnamed.inode, unnamed.path.as_str()), (993, ""));
        assert_eq!(parse_unix("0000: 2 0 zz 0001 01 1"), None);
    }

    #[test]
    fn names_tcp_udp_and_unix_sockets_by_address_and_state() {
        let me = std::process::id() as i32;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let port = listener.local_addr().expect("its address").port();
        assert_eq!(describe_socket(me, inode_of(&listener)), Some(format!("TCP 127.0.0.1:{port}, listening")));

        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("a connection");
        let local = client.local_addr().expect("its address");
        assert_eq!(
            describe_socket(me, inode_of(&client)),
            Some(format!("TCP {local} -> 127.0.0.1:{port}, established"))
        );

        let udp = std::net::UdpSocket::bind("[::1]:0").expect("a UDP socket");
        let udp_port = udp.local_addr().expect("its address").port();
        assert_eq!(describe_socket(me, inode_of(&udp)), Some(format!("UDP [::1]:{udp_port}, bound")));

        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("app.sock");
        let unix = std::os::unix::net::UnixListener::bind(&path).expect("a Unix listener");
        assert_eq!(
            describe_socket(me, inode_of(&unix)),
            Some(format!("Unix stream {}, listening", path.display()))
        );
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("a pair");
        assert_eq!(describe_socket(me, inode_of(&a)), Some("Unix stream (unnamed), connected".into()));
    }

    #[test]
    fn names_the_other_holder_of_each_pipe() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sleep");
        let stdin = child.stdin.take().expect("its stdin");
        let stdout = child.stdout.take().expect("its stdout");
        let target = format!("pipe:[{}]", inode_of(&stdin));
        let other = format!("pipe:[{}]", inode_of(&stdout));
        let me = std::process::id() as i32;
        let holders = PipeHolders::find(me, [target.as_str(), other.as_str(), "socket:[1]", "/dev/null"].into_iter());
        let _ = child.kill();
        let _ = child.wait();
        // The same process holds both pipes: it is named for each.
        for pipe in [&target, &other] {
            assert_eq!(holders.describe(me, pipe), Some(format!("a pipe also held by pid {} `sleep 30`", child.id())));
        }
        assert_eq!(holders.describe(me, "/dev/null"), None);
        assert_eq!(PipeHolders::find(me, ["/dev/null"].into_iter()).holders.len(), 0);
    }
}
