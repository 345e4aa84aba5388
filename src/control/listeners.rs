//! The node's sockets as a whole: the client port's listeners (one per core), whether another
//! process already listens there, and ending every socket at exit.
//!
//! The worker cores bind the client port with SO_REUSEPORT, which would let a second node (a
//! stray `ringway serve`, a unit started twice) bind beside the first and take a share of its
//! upgrades unseen. A bind without SO_REUSEPORT as a probe is no test: it also fails while the
//! previous process's closed connections still linger on the port (FIN-WAIT, LAST-ACK), which
//! would stop a quick restart. So the kernel's socket tables are read instead: only a socket
//! in LISTEN state on the port counts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// TCP state LISTEN in `/proc/net/tcp*`.
const LISTEN: &str = "0A";

/// True if a table in `/proc/net/tcp` or `tcp6` format lists a listener that `addr` would
/// share its port with: the same port, and the same address or either side a wildcard.
pub fn listed(table: &str, addr: SocketAddr) -> bool {
    table.lines().skip(1).any(|line| {
        let mut cols = line.split_whitespace().skip(1);
        let (Some(local), Some(_remote), Some(state)) = (cols.next(), cols.next(), cols.next())
        else {
            return false;
        };
        state == LISTEN
            && parse_local(local).is_some_and(|(ip, port)| {
                port == addr.port()
                    && (ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified())
            })
    })
}

/// `0100007F:1F90` → 127.0.0.1:8080: each 32-bit word of the address is printed in host
/// order (little-endian on the machines ringway runs on).
fn parse_local(s: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in ip.as_bytes().chunks(8) {
        let w = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some((ip, port))
}

/// Reads this network namespace's TCP tables; an unreadable table counts as empty.
pub fn someone_listens(addr: SocketAddr) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .any(|path| std::fs::read_to_string(path).is_ok_and(|table| listed(&table, addr)))
}

/// Why the node cannot have its ports.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "cannot listen on {0}: another process already listens there (is another ringway running?)"
    )]
    Taken(SocketAddr),
    #[error("cannot listen on {port}{addr}: {source}")]
    Io {
        /// "" for the client port, "admin " for the admin port.
        port: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The client port's listeners, one per worker core, and the admin port's.
pub fn bind(
    listen: SocketAddr,
    admin: SocketAddr,
    cores: usize,
) -> Result<(Vec<OwnedFd>, std::net::TcpListener), BindError> {
    refuse_if_taken(listen)?;
    let io = |port, addr| move |source| BindError::Io { port, addr, source };
    let fds = (0..cores)
        .map(|_| bind_reuseport(listen))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("", listen))?;
    let admin_listener = std::net::TcpListener::bind(admin)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(io("admin ", admin))?;
    Ok((fds, admin_listener))
}

/// SO_REUSEPORT is for this node's own cores: a second process on the same address would take
/// a share of the upgrades unseen.
fn refuse_if_taken(addr: SocketAddr) -> Result<(), BindError> {
    if someone_listens(addr) {
        return Err(BindError::Taken(addr));
    }
    Ok(())
}

/// Ends every socket of the process before it exits. The cores' sockets have requests in flight
/// on their io_uring rings, and a ring keeps its sockets alive past the process while those are
/// pending: the listeners stayed in LISTEN (in the port's reuseport group, never accepting
/// again) and connections still in their handshake stayed open for as long as their clients
/// did, so a node restarted on the port would have shared it with a dead one, and those clients
/// never heard the node was gone. shutdown(2) ends a socket whoever still holds it.
pub fn shut_every_socket() {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for fd in fds
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        // SAFETY: fstat and shutdown on an fd number of our own; a number that is not a socket
        // (or was closed meanwhile) is skipped or makes shutdown fail harmlessly.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }
}

/// One listening socket per worker core on the same address: the kernel spreads new
/// connections across them.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1145 1 0 100 0 0 10 0
   1: 0100007F:2382 0100007F:1F90 06 00000000:00000000 03:00000eb8 00000000     0        0 0 3 0
   2: 0100007F:1F91 0200007F:9C40 04 00000000:00000000 00:00000000 00000000     0        0 0 1 0";
    const V6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000";

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_listener_on_the_port_counts() {
        assert!(listed(V4, at("127.0.0.1:8080")));
        assert!(
            listed(V4, at("0.0.0.0:8080")),
            "a wildcard bind shares every address"
        );
        assert!(!listed(V4, at("127.0.0.2:8080")), "another address");
        // Port 8081 has only a connection closing (FIN-WAIT1): a restart may take it.
        assert!(!listed(V4, at("127.0.0.1:8081")));
        assert!(!listed(V4, at("127.0.0.1:9090")));
        assert!(
            listed(V6, at("127.0.0.1:8082")),
            "a dual-stack wildcard listener"
        );
        assert!(listed(V6, at("[::1]:8082")));
    }

    #[test]
    fn addresses_read_as_the_kernel_prints_them() {
        assert_eq!(
            parse_local("0100007F:1F90"),
            Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 8080))
        );
        assert_eq!(
            parse_local("00000000000000000000000001000000:0050"),
            Some((IpAddr::V6(Ipv6Addr::LOCALHOST), 80))
        );
    }
}
