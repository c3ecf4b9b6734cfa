#![no_std]
//! Map keys and values shared by the kernel programs and the agent.
//!
//! # Byte order
//!
//! One convention for every map: **addresses and ports are stored in network
//! byte order**, exactly as they travel on the wire. An IPv4 address is the
//! `u32` whose in-memory bytes are the four octets (`u32::from_ne_bytes(octets)`),
//! a port is the `u16` whose in-memory bytes are the big-endian port
//! (`port.to_be()`).
//!
//! The kernel hands the programs ports in three different encodings; the
//! `port_from_*` functions turn each one into the map convention, and
//! [`Ipv4Endpoint`] converts from and to host values on the user side.
//!
//! # Socket keys
//!
//! Sockets are keyed by [`SockKey`]: the network namespace cookie of the
//! socket, then its local and remote address. The namespace cookie keeps two
//! pods that use the same addresses in different network namespaces apart.
//! A connection is identified everywhere by the key of the agent's side of it
//! (the accepted socket, in the agent's namespace), which is unique because
//! TCP itself allows one such 4-tuple per namespace.

/// Index of each program's counters in the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `cgroup/connect4`: redirected = connects rewritten to the listener.
    Connect4 = 0,
    /// `sock_ops`: redirected = sockets put into the fast-path map.
    SockOps = 1,
    /// `sk_msg`: redirected = messages handed to the peer socket, `bytes` their
    /// size, `pinned` = sockets kept on TCP at their first message.
    SkMsg = 2,
    /// `cgroup/getsockopt`: redirected = `SO_ORIGINAL_DST` answers.
    GetSockopt = 3,
    /// `cgroup/connect6`: redirected = v4-mapped connects rewritten to the
    /// listener.
    Connect6 = 4,
}

impl Program {
    /// Every program, in counter-index order.
    pub const ALL: [Program; 5] = [
        Program::Connect4,
        Program::SockOps,
        Program::SkMsg,
        Program::GetSockopt,
        Program::Connect6,
    ];
    /// Number of entries in the counters array.
    pub const COUNT: u32 = 5;

    /// Short name, as shown by `balancerctl` and in test output.
    pub const fn name(self) -> &'static str {
        match self {
            Program::Connect4 => "connect4",
            Program::SockOps => "sock_ops",
            Program::SkMsg => "sk_msg",
            Program::GetSockopt => "getsockopt",
            Program::Connect6 => "connect6",
        }
    }
}

/// Per-program counters (one per CPU in the map; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramCounters {
    /// The program did its job (see [`Program`] for what that means per program).
    pub redirected: u64,
    /// The program let the event through untouched.
    pub passed: u64,
    /// A map operation failed; the event was let through untouched.
    pub errors: u64,
    /// Bytes redirected (sk_msg only).
    pub bytes: u64,
    /// Sockets pinned to plain TCP at their first message (sk_msg only).
    pub pinned: u64,
}

impl ProgramCounters {
    /// Adds `other` into `self` (summing per-CPU values).
    pub fn add(&mut self, other: &ProgramCounters) {
        self.redirected = self.redirected.wrapping_add(other.redirected);
        self.passed = self.passed.wrapping_add(other.passed);
        self.errors = self.errors.wrapping_add(other.errors);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.pinned = self.pinned.wrapping_add(other.pinned);
    }
}

/// An IPv4 address and port, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv4Endpoint {
    /// Address, network byte order.
    pub ip: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Always zero (hash keys must have no uninitialised bytes).
    pub _pad: u16,
}

impl Ipv4Endpoint {
    /// From values already in network byte order (as the kernel gives them).
    pub const fn new(ip_be: u32, port_be: u16) -> Self {
        Ipv4Endpoint {
            ip: ip_be,
            port: port_be,
            _pad: 0,
        }
    }

    /// From the four octets and a host-order port.
    pub const fn from_octets(octets: [u8; 4], port: u16) -> Self {
        Ipv4Endpoint::new(u32::from_ne_bytes(octets), port.to_be())
    }

    /// The four octets of the address.
    pub const fn octets(&self) -> [u8; 4] {
        self.ip.to_ne_bytes()
    }

    /// The port in host byte order.
    pub const fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Key of the services map: a balanced VIP and port.
pub type ServiceKey = Ipv4Endpoint;

/// Value of the services map (reserved for per-service flags; 0 today).
pub type ServiceValue = u32;

/// Value of the enrolled-cgroups map, keyed by cgroup id (`u64`, the inode
/// number of the cgroup's directory). Reserved for flags; 1 today.
pub type EnrolledValue = u32;

/// One socket: its network namespace cookie and its local and remote address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Cookie of the socket's network namespace (`SO_NETNS_COOKIE`).
    pub netns: u64,
    /// Local address and port (network byte order).
    pub local: Ipv4Endpoint,
    /// Remote address and port (network byte order).
    pub remote: Ipv4Endpoint,
}

impl SockKey {
    /// The key of the socket at the other end of the same connection, given
    /// the namespace cookie of that socket.
    pub const fn peer(&self, peer_netns: u64) -> SockKey {
        SockKey {
            netns: peer_netns,
            local: self.remote,
            remote: self.local,
        }
    }
}

/// Which path a socket's outgoing bytes take, decided at its first message.
pub mod path {
    /// No message sent yet.
    pub const UNDECIDED: u32 = 0;
    /// Every message is redirected to the peer socket (sk_msg fast path).
    pub const REDIRECT: u32 = 1;
    /// Every message goes through TCP: the first one could not be redirected
    /// (or the agent took the connection out). Never switches back.
    pub const TCP: u32 = 2;
}

/// Flag in [`Connection::flags`]: the agent took this connection out of the
/// fast path; from now on both sides send through TCP.
pub const CONN_LEFT_FAST_PATH: u32 = 1;

/// Flag in [`Connection::flags`]: the entry pairs the agent's upstream socket
/// with a node-local endpoint's accepted socket; `original` is the endpoint
/// and the `pod_*` fields describe the endpoint's socket.
pub const CONN_UPSTREAM: u32 = 2;

/// Value of the connections map, keyed by the [`SockKey`] of the agent's
/// (accepted) socket. Written by sock_ops when the pod's side is established,
/// read by getsockopt (`SO_ORIGINAL_DST`) and by sk_msg, removed when the
/// agent's socket closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    /// The VIP and port the pod dialed.
    pub original: Ipv4Endpoint,
    /// Network namespace cookie of the pod's socket.
    pub pod_netns: u64,
    /// Socket cookie of the pod's socket.
    pub pod_cookie: u64,
    /// [`path`] of the pod's socket.
    pub pod_path: u32,
    /// [`path`] of the agent's socket.
    pub agent_path: u32,
    /// [`CONN_LEFT_FAST_PATH`] and future flags.
    pub flags: u32,
    /// Always zero.
    pub _pad: u32,
}

/// Runtime configuration, the single entry of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The agent's listener; connect4 rewrites redirected connects to it.
    pub listener: Ipv4Endpoint,
    /// Network namespace cookie of the listener's namespace.
    pub agent_netns: u64,
    /// Cgroup id of the agent's own cgroup: its connects are never redirected.
    pub agent_cgroup: u64,
    /// Non-zero: redirect connects (0 until the loader has written the rest).
    pub enabled: u32,
    /// Non-zero: new connections enter the sk_msg fast path.
    pub fast_path: u32,
}

/// Sockets carrying this `SO_MARK` are never redirected by connect4 (a second
/// guard, besides the agent's cgroup, against redirect loops).
pub const SKIP_MARK: u32 = 0x6261_6c61; // "bala"

/// Deepest cgroup level connect4 walks up when looking for an enrolled
/// ancestor of the calling process's cgroup.
pub const MAX_CGROUP_DEPTH: i32 = 24;

/// Map sizes: a large node (64k connections in flight, 16k service ports).
pub mod sizes {
    /// Services map (VIP:port entries).
    pub const SERVICES: u32 = 16_384;
    /// Enrolled cgroups.
    pub const ENROLLED: u32 = 16_384;
    /// Original destinations between connect and established (LRU).
    pub const ORIGINAL_BY_COOKIE: u32 = 65_536;
    /// Connections (LRU; removed when the agent's socket closes).
    pub const CONNECTIONS: u32 = 131_072;
    /// Sockets in the fast path (two per connection).
    pub const SOCKETS: u32 = 131_072;
    /// The agent's upstream sockets offered to the fast path, between
    /// connect and established (LRU).
    pub const UPSTREAM_OFFERS: u32 = 4_096;
}

/// `SOL_IP`.
pub const SOL_IP: i32 = 0;
/// `SO_ORIGINAL_DST` (netfilter's option, answered by the getsockopt program).
pub const SO_ORIGINAL_DST: i32 = 80;

/// Port from `bpf_sock_addr.user_port` (connect4): network order in the low
/// 16 bits of a `u32`.
#[inline(always)]
pub const fn port_from_sock_addr(user_port: u32) -> u16 {
    user_port as u16
}

/// `bpf_sock_addr.user_port` value for a port in network order.
#[inline(always)]
pub const fn port_to_sock_addr(port_be: u16) -> u32 {
    port_be as u32
}

/// Port from `bpf_sock_ops.remote_port` or `sk_msg_md.remote_port`: network
/// order, shifted into the high 16 bits of the `u32` on little-endian.
#[inline(always)]
pub const fn port_from_remote_u32(remote_port: u32) -> u16 {
    // The big-endian u32 view of the field is the host-order port.
    (u32::from_be(remote_port) as u16).to_be()
}

/// Port from `bpf_sock_ops.local_port`, `sk_msg_md.local_port` or
/// `bpf_sock.src_port`: host byte order in a `u32`.
#[inline(always)]
pub const fn port_from_host_u32(local_port: u32) -> u16 {
    (local_port as u16).to_be()
}

/// Port from `bpf_sock.dst_port` (a `__be16`): already network order.
#[inline(always)]
pub const fn port_from_be16(dst_port: u16) -> u16 {
    dst_port
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], Copy, made only of integers, and
    // have explicit padding fields, so every bit pattern is valid and no byte
    // is uninitialised.
    unsafe impl aya::Pod for Ipv4Endpoint {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for Connection {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ProgramCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_round_trips_host_values() {
        let ep = Ipv4Endpoint::from_octets([10, 96, 0, 10], 50051);
        assert_eq!(ep.octets(), [10, 96, 0, 10]);
        assert_eq!(ep.host_port(), 50051);
        // In memory, exactly the wire bytes.
        assert_eq!(ep.ip.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(ep.port.to_ne_bytes(), 50051u16.to_be_bytes());
    }

    #[test]
    fn sock_addr_port_is_network_order_low_half() {
        // The kernel stores user_port as the __be16 in the low 16 bits.
        let user_port = u32::from(u16::from_ne_bytes(8080u16.to_be_bytes()));
        let port = port_from_sock_addr(user_port);
        assert_eq!(Ipv4Endpoint::new(0, port).host_port(), 8080);
        assert_eq!(port_to_sock_addr(port), user_port);
    }

    #[test]
    fn remote_port_is_network_order_high_half() {
        // sock_ops/sk_msg remote_port: the __be16 shifted left by 16 bits
        // (little-endian kernels), i.e. in memory: 00 00 hi lo.
        let remote_port = u32::from_ne_bytes([0, 0, 0x1f, 0x90]);
        let port = port_from_remote_u32(remote_port);
        assert_eq!(Ipv4Endpoint::new(0, port).host_port(), 0x1f90);
    }

    #[test]
    fn local_port_is_host_order() {
        let port = port_from_host_u32(40000);
        assert_eq!(Ipv4Endpoint::new(0, port).host_port(), 40000);
        assert_eq!(port_from_be16(port), port);
    }

    #[test]
    fn peer_key_swaps_ends_and_namespace() {
        let pod = SockKey {
            netns: 7,
            local: Ipv4Endpoint::from_octets([10, 0, 0, 2], 40000),
            remote: Ipv4Endpoint::from_octets([10, 0, 0, 1], 15001),
        };
        let agent = pod.peer(3);
        assert_eq!(agent.netns, 3);
        assert_eq!(agent.local, pod.remote);
        assert_eq!(agent.remote, pod.local);
        assert_eq!(agent.peer(7), pod);
    }

    #[test]
    fn keys_have_no_implicit_padding() {
        // Hash keys are compared bytewise by the kernel.
        assert_eq!(core::mem::size_of::<Ipv4Endpoint>(), 8);
        assert_eq!(core::mem::size_of::<SockKey>(), 24);
        assert_eq!(core::mem::size_of::<Connection>(), 40);
        assert_eq!(core::mem::size_of::<Config>(), 32);
    }

    #[test]
    fn counters_sum() {
        let mut a = ProgramCounters {
            redirected: 1,
            passed: 2,
            errors: 3,
            bytes: 4,
            pinned: 5,
        };
        a.add(&a.clone());
        assert_eq!(a.redirected + a.passed + a.errors + a.bytes + a.pinned, 30);
    }
}
