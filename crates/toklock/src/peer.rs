//! Which process on this machine is on the other end of an accepted TCP connection.
//!
//! SDKs open one connection per concurrent request, so a connection is not an agent; the process
//! that owns the client socket is a much better guess. On Linux we find it through `/proc`: the
//! client's socket is the one whose *local* address is our peer address and whose *remote*
//! address is our local address; `/proc/net/tcp{,6}` gives its inode, and the process holding it
//! has a `/proc/<pid>/fd/*` link to `socket:[inode]`. This reads many files, so callers run it on
//! the blocking pool, once per connection (see [`crate::agent::ConnectionInfo`]).
//!
//! Limits: a client in another network namespace (a container) or a remote host is not found;
//! without root, only processes of our own user are visible. Callers fall back to the connection.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A process, told apart from a later process that reuses its pid by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.pid, self.start_time)
    }
}

/// The process that owns the client end of the connection we see as `peer` -> `local`.
/// Blocking (reads `/proc`); `None` when it cannot be found or off Linux.
pub fn socket_owner(peer: SocketAddr, local: SocketAddr) -> Option<ProcessId> {
    let peer = canonical(peer);
    let local = canonical(local);
    if !could_be_local(peer, local) {
        return None;
    }
    #[cfg(target_os = "linux")]
    {
        linux::socket_owner(peer, local)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`, what a dual-stack listener reports) as plain IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A client on this host connects from loopback or from the very address it dialled; anything
/// else is remote and not worth scanning `/proc` for (a flood of remote connections stays cheap).
fn could_be_local(peer: SocketAddr, local: SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip() == local.ip()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::OsStr;
    use std::fs;
    use std::io::{BufRead, BufReader};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    use super::{canonical, ProcessId};

    pub(super) fn socket_owner(peer: SocketAddr, local: SocketAddr) -> Option<ProcessId> {
        let socket = find_socket(peer, local)?;
        let target = format!("socket:[{}]", socket.inode);
        let (pid, fd_link) = find_holder(Path::new("/proc"), target.as_bytes(), socket.uid)?;
        let start_time = start_time(pid)?;
        // The holder may have exited between the scan and reading its start time, and its pid
        // been reused; if the fd still points at the socket, the start time is the holder's.
        if !links_to(&fd_link, target.as_bytes()) {
            return None;
        }
        Some(ProcessId { pid, start_time })
    }

    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct SocketEntry {
        pub local: SocketAddr,
        pub remote: SocketAddr,
        pub uid: u32,
        pub inode: u64,
    }

    /// The client socket: local == our peer, remote == our local. An IPv4 client may also use a
    /// dual-stack IPv6 socket, so both tables are searched, IPv4 first when the addresses are.
    fn find_socket(peer: SocketAddr, local: SocketAddr) -> Option<SocketEntry> {
        let tables: &[&str] = if peer.is_ipv4() {
            &["/proc/net/tcp", "/proc/net/tcp6"]
        } else {
            &["/proc/net/tcp6"]
        };
        tables.iter().find_map(|table| {
            let file = fs::File::open(table).ok()?;
            BufReader::new(file)
                .lines()
                .skip(1)
                .map_while(Result::ok)
                .filter_map(|line| parse_line(&line))
                .find(|entry| {
                    entry.inode != 0
                        && canonical(entry.local) == peer
                        && canonical(entry.remote) == local
                })
        })
    }

    /// One row of `/proc/net/tcp` or `/proc/net/tcp6`:
    /// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`.
    pub(super) fn parse_line(line: &str) -> Option<SocketEntry> {
        let mut fields = line.split_whitespace();
        let local = parse_addr(fields.nth(1)?)?;
        let remote = parse_addr(fields.next()?)?;
        let uid = fields.nth(4)?.parse().ok()?;
        let inode = fields.nth(1)?.parse().ok()?;
        Some(SocketEntry {
            local,
            remote,
            uid,
            inode,
        })
    }

    /// `0100007F:1F90` or 32 hex digits `:` port. The kernel prints each 32-bit word of the
    /// network-order address as a host-endian integer, so each word goes back through
    /// `to_ne_bytes`; the port is printed as a plain number.
    pub(super) fn parse_addr(text: &str) -> Option<SocketAddr> {
        let (ip, port) = text.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let ip = match ip.len() {
            8 => IpAddr::V4(Ipv4Addr::from(word(ip)?.to_ne_bytes())),
            32 => {
                let mut bytes = [0u8; 16];
                for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                    let hex = ip.get(i * 8..i * 8 + 8)?;
                    chunk.copy_from_slice(&word(hex)?.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    fn word(hex: &str) -> Option<u32> {
        u32::from_str_radix(hex, 16).ok()
    }

    /// The first pid with an fd linking to `target`, and that fd's path. Processes owned by the
    /// socket's uid are scanned first: the owner is almost always among them, and the rest of
    /// the machine is only read when it is not (a process that changed uid after connecting).
    pub(super) fn find_holder(proc_root: &Path, target: &[u8], uid: u32) -> Option<(u32, PathBuf)> {
        let mut pids: Vec<(bool, u32)> = fs::read_dir(proc_root)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let other_user = entry.metadata().map_or(true, |m| m.uid() != uid);
                Some((other_user, pid))
            })
            .collect();
        // Stable: keeps the directory's (ascending pid) order within each group, so a parent
        // that shares the socket with its children is found before them.
        pids.sort_by_key(|(other_user, _)| *other_user);
        pids.into_iter().find_map(|(_, pid)| {
            let fds = fs::read_dir(proc_root.join(pid.to_string()).join("fd")).ok()?;
            fds.filter_map(Result::ok)
                .map(|fd| fd.path())
                .find(|path| links_to(path, target))
                .map(|path| (pid, path))
        })
    }

    fn links_to(path: &Path, target: &[u8]) -> bool {
        fs::read_link(path).is_ok_and(|link| OsStr::as_bytes(link.as_os_str()) == target)
    }

    /// Field 22 of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
    /// parentheses, so fields are counted from the last `)`.
    fn start_time(pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_start_time(&stat)
    }

    pub(super) fn parse_start_time(stat: &str) -> Option<u64> {
        let (_, rest) = stat.rsplit_once(')')?;
        // `rest` starts at field 3 (state), so field 22 is the 20th.
        rest.split_whitespace().nth(19)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().unwrap();
        assert_eq!(canonical(mapped), "127.0.0.1:4000".parse().unwrap());
        let v6: SocketAddr = "[::1]:4000".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn remote_peers_are_not_looked_up() {
        let local: SocketAddr = "192.168.1.5:4000".parse().unwrap();
        assert!(could_be_local("127.0.0.1:5000".parse().unwrap(), local));
        assert!(could_be_local("192.168.1.5:5000".parse().unwrap(), local));
        assert!(!could_be_local("192.168.1.9:5000".parse().unwrap(), local));
        assert_eq!(
            socket_owner("203.0.113.7:5000".parse().unwrap(), local),
            None
        );
    }

    #[cfg(target_os = "linux")]
    mod linux_parsing {
        use super::super::linux::*;
        use std::net::SocketAddr;

        #[test]
        fn parses_ipv4_rows() {
            let row = "   3: 0100007F:D2E4 0100007F:0FA0 01 00000000:00000000 00:00000000 \
                       00000000  1000        0 123456 1 0000000000000000 20 4 30 10 -1";
            let entry = parse_line(row).unwrap();
            assert_eq!(
                entry.local,
                "127.0.0.1:53988".parse::<SocketAddr>().unwrap()
            );
            assert_eq!(
                entry.remote,
                "127.0.0.1:4000".parse::<SocketAddr>().unwrap()
            );
            assert_eq!(entry.uid, 1000);
            assert_eq!(entry.inode, 123456);
        }

        #[test]
        fn parses_ipv6_rows() {
            // ::1 and ::ffff:127.0.0.1 as a little-endian kernel prints them.
            let row = "   0: 00000000000000000000000001000000:1F90 \
                       0000000000000000FFFF00000100007F:D2E4 01 00000000:00000000 \
                       00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1";
            let entry = parse_line(row).unwrap();
            if cfg!(target_endian = "little") {
                assert_eq!(entry.local, "[::1]:8080".parse::<SocketAddr>().unwrap());
                assert_eq!(
                    entry.remote,
                    "[::ffff:127.0.0.1]:53988".parse::<SocketAddr>().unwrap()
                );
            }
            assert_eq!(entry.inode, 777);
        }

        #[test]
        fn rejects_garbage() {
            assert_eq!(parse_line(""), None);
            assert_eq!(parse_line("  sl  local_address rem_address   st"), None);
            assert_eq!(parse_addr("0100007F"), None);
            assert_eq!(parse_addr("0100007:1F90"), None);
            assert_eq!(parse_addr("XYZ0007F:1F90"), None);
            assert_eq!(parse_addr("0100007F:1F9000"), None);
        }

        #[test]
        fn start_time_survives_odd_command_names() {
            let mut stat = String::from("42 (we (ird) name) S");
            for field in 4..=21 {
                stat.push_str(&format!(" {field}"));
            }
            stat.push_str(" 987654 1 2 3");
            assert_eq!(parse_start_time(&stat), Some(987654));
            assert_eq!(parse_start_time("42 (x) S 1 2"), None);
        }

        #[test]
        fn this_process_has_a_start_time() {
            let own = std::fs::read_to_string("/proc/self/stat").unwrap();
            assert!(parse_start_time(&own).is_some());
        }
    }

    /// The client end of a real loopback connection belongs to this very test process.
    #[cfg(target_os = "linux")]
    #[test]
    fn finds_this_process_as_the_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let local = accepted.local_addr().unwrap();
        let owner = socket_owner(peer, local).expect("own socket found in /proc");
        assert_eq!(owner.pid, std::process::id());
    }

    /// Same through a dual-stack listener, which reports IPv4 peers as `::ffff:a.b.c.d`.
    #[cfg(target_os = "linux")]
    #[test]
    fn finds_ipv4_clients_of_a_dual_stack_listener() {
        let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
            return; // no IPv6 on this host
        };
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let local = accepted.local_addr().unwrap();
        assert!(peer.is_ipv6(), "dual-stack listener reports {peer}");
        let owner = socket_owner(peer, local).expect("own socket found in /proc");
        assert_eq!(owner.pid, std::process::id());
    }
}
