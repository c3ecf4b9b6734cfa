//! `balancer-test-pod`: client workloads run inside a test pod (see
//! `balancer_tests::pod`). Prints one JSON line per subcommand.

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use balancer_tests::wire::{self, Cmd, Header, PayloadStream};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// One connection: report the connect result, the agent's ORIG line and
    /// an echo round trip.
    Probe {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 4096)]
        echo: usize,
        /// Set this SO_MARK on the socket before connecting.
        #[arg(long)]
        mark: Option<u32>,
    },
    /// Many connections writing right after connect, payloads verified by
    /// the agent.
    Load {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        conns: u64,
        #[arg(long, default_value_t = 8)]
        threads: u64,
        #[arg(long, default_value_t = 1 << 20)]
        max_size: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 60)]
        deadline_secs: u64,
        /// Pin this process to one CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Flood a connection the agent stops reading.
    Flood {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        prefix: u64,
        #[arg(long)]
        max_bytes: u64,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Ask the agent to stop reading without leaving the fast path.
        #[arg(long)]
        keep_fast_path: bool,
    },
    /// Stand in for kube-proxy: accept on `listen` (a Service VIP) and
    /// forward each connection, as it comes, to the next of `to` (one
    /// backend per connection, as every L4 balancer does). Prints one JSON
    /// line once listening; runs until killed.
    Forward {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, value_delimiter = ',')]
        to: Vec<SocketAddr>,
    },
    /// Open connections and keep them; on each stdin line `check`, report
    /// whether each still carries an echo round trip.
    Hold {
        /// IPv4 sockets to these addresses.
        #[arg(long)]
        to: Vec<SocketAddr>,
        /// Dual-stack IPv6 sockets to these IPv4 addresses (`::ffff:a.b.c.d`).
        #[arg(long)]
        to_mapped: Vec<std::net::SocketAddrV4>,
    },
}

fn main() {
    let out = match Args::parse().cmd {
        Sub::Probe { to, echo, mark } => probe(to, echo, mark),
        Sub::Load {
            to,
            conns,
            threads,
            max_size,
            seed,
            deadline_secs,
            cpu,
        } => load(to, conns, threads, max_size, seed, deadline_secs, cpu),
        Sub::Flood {
            to,
            prefix,
            max_bytes,
            secs,
            keep_fast_path,
        } => flood(to, prefix, max_bytes, secs, keep_fast_path),
        Sub::Forward { listen, to } => forward(listen, to),
        Sub::Hold { to, to_mapped } => hold(to, to_mapped),
    };
    println!("{out}");
    let _ = io::stdout().flush();
}

fn connect_error(e: &io::Error) -> serde_json::Value {
    json!({"connect": "error", "errno": e.raw_os_error().unwrap_or(0), "error": e.to_string()})
}

/// A blocking IPv4 connect with `SO_MARK` set first.
fn connect_marked(to: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V4(v4) = to else {
        return Err(io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket calls on a descriptor this function owns; it is
    // handed to TcpStream (which closes it) or closed on error.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            std::ptr::from_ref(&mark).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            std::ptr::from_ref(&sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn probe(to: SocketAddr, echo: usize, mark: Option<u32>) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let connected = match mark {
        Some(mark) => connect_marked(to, mark),
        None => TcpStream::connect_timeout(&to, Duration::from_secs(3)),
    };
    let mut s = match connected {
        Ok(s) => s,
        Err(e) => return connect_error(&e),
    };
    let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    let orig = match wire::read_line(&mut s, deadline) {
        Ok(Some(line)) => line.strip_prefix("ORIG ").map(str::to_owned),
        Ok(None) => None,
        Err(e) => return json!({"connect": "ok", "peer": peer, "orig": null, "read_error": e.to_string()}),
    };
    let Some(orig) = orig else {
        return json!({"connect": "ok", "peer": peer, "orig": null, "closed": true});
    };
    let header = Header {
        cmd: Cmd::Echo,
        seed: 0,
        len: 0,
    };
    let mut payload = vec![0u8; echo];
    PayloadStream::new(99).fill(&mut payload);
    let sent = wire::write_all(&mut s, &header.encode(), deadline)
        .and_then(|()| wire::write_all(&mut s, &payload, deadline))
        .and_then(|()| s.shutdown(Shutdown::Write));
    let mut back = Vec::new();
    let echoed = sent.and_then(|()| {
        let mut buf = [0u8; 8192];
        loop {
            match wire::read_some(&mut s, &mut buf, deadline)? {
                0 => return Ok(()),
                n => back.extend_from_slice(&buf[..n]),
            }
        }
    });
    json!({
        "connect": "ok",
        "peer": peer,
        "orig": orig,
        "echo_ok": echoed.is_ok() && back == payload,
        "echo_error": echoed.err().map(|e| e.to_string()),
    })
}

#[derive(Default)]
struct LoadResult {
    done: u64,
    ok: u64,
    bytes: u64,
    bad: Vec<String>,
    errors: Vec<String>,
}

fn one_connection(to: SocketAddr, seed: u64, size: u64, deadline: Instant) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    let header = Header {
        cmd: Cmd::Verify,
        seed,
        len: size,
    };
    // The small first write, right after connect.
    wire::write_all(&mut s, &header.encode(), deadline).map_err(|e| format!("header: {e}"))?;
    let mut stream = PayloadStream::new(seed);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.fill(&mut chunk[..n]);
        wire::write_all(&mut s, &chunk[..n], deadline).map_err(|e| format!("payload: {e}"))?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let orig = wire::read_line(&mut s, deadline).map_err(|e| format!("orig line: {e}"))?;
    if orig.as_deref().and_then(|l| l.strip_prefix("ORIG ")) != Some(&to.to_string()) {
        return Err(format!("BAD orig line {orig:?}"));
    }
    let verdict = wire::read_line(&mut s, deadline).map_err(|e| format!("verdict: {e}"))?;
    match verdict.as_deref() {
        Some(v) if v == format!("OK {size}") => Ok(()),
        other => Err(format!("BAD size={size} verdict={other:?}")),
    }
}

fn load(
    to: SocketAddr,
    conns: u64,
    threads: u64,
    max_size: u64,
    seed: u64,
    deadline_secs: u64,
    cpu: Option<usize>,
) -> serde_json::Value {
    if let Some(cpu) = cpu {
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET on a valid index.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(deadline_secs);
    let result = Arc::new(Mutex::new(LoadResult::default()));
    let threads = threads.max(1);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let result = result.clone();
            std::thread::spawn(move || {
                let mut sizes = PayloadStream::new(seed.wrapping_mul(31).wrapping_add(t));
                let mut i = t;
                while i < conns && Instant::now() < deadline {
                    // Every 50th connection carries the maximum size.
                    let size = if i % 50 == 0 { max_size } else { sizes.size(max_size) };
                    let conn_seed = seed.wrapping_mul(1_000_003).wrapping_add(i);
                    let outcome = one_connection(to, conn_seed, size, deadline);
                    let mut r = result.lock().unwrap_or_else(|p| p.into_inner());
                    r.done += 1;
                    match outcome {
                        Ok(()) => {
                            r.ok += 1;
                            r.bytes += size;
                        }
                        Err(e) if e.starts_with("BAD") => {
                            if r.bad.len() < 10 {
                                r.bad.push(format!("conn {i}: {e}"));
                            } else {
                                r.bad.push(String::new());
                            }
                        }
                        Err(e) => {
                            if r.errors.len() < 10 {
                                r.errors.push(format!("conn {i}: {e}"));
                            } else {
                                r.errors.push(String::new());
                            }
                        }
                    }
                    i += threads;
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let r = result.lock().unwrap_or_else(|p| p.into_inner());
    json!({
        "planned": conns,
        "done": r.done,
        "ok": r.ok,
        "bytes": r.bytes,
        "bad_count": r.bad.len(),
        "bad": r.bad.iter().filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        "error_count": r.errors.len(),
        "errors": r.errors.iter().filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        "elapsed_ms": started.elapsed().as_millis() as u64,
    })
}

fn flood(to: SocketAddr, prefix: u64, max_bytes: u64, secs: u64, keep_fast_path: bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs + 10);
    let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return connect_error(&e),
    };
    let mut run = || -> io::Result<serde_json::Value> {
        let orig = wire::read_line(&mut s, deadline)?;
        let header = Header {
            cmd: if keep_fast_path { Cmd::Hold } else { Cmd::Stall },
            seed: 5,
            len: prefix,
        };
        wire::write_all(&mut s, &header.encode(), deadline)?;
        let mut chunk = vec![0u8; 64 * 1024];
        PayloadStream::new(5).fill(&mut chunk);
        let mut left = prefix;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            wire::write_all(&mut s, &chunk[..n], deadline)?;
            left -= n as u64;
        }
        let left_line = wire::read_line(&mut s, deadline)?;
        s.set_nonblocking(true)?;
        let flood_deadline = Instant::now() + Duration::from_secs(secs);
        let mut written: u64 = 0;
        let mut last_progress = Instant::now();
        let mut blocked = false;
        while written < max_bytes && Instant::now() < flood_deadline {
            match s.write(&chunk) {
                Ok(n) => {
                    written += n as u64;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if last_progress.elapsed() > Duration::from_secs(1) {
                        blocked = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "connect": "ok",
            "orig": orig,
            "left": left_line,
            "written_after_left": written,
            "blocked": blocked,
        }))
    };
    let out = run().unwrap_or_else(|e| json!({"connect": "ok", "error": e.to_string()}));
    // Keep the connection open until the test has looked (stdin closes).
    println!("{out}");
    let _ = io::stdout().flush();
    let _ = io::stdin().read_to_end(&mut Vec::new());
    json!({"closed": true})
}

fn forward(listen: SocketAddr, to: Vec<SocketAddr>) -> serde_json::Value {
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => return json!({"listening": false, "error": e.to_string()}),
    };
    println!("{}", json!({"listening": true, "addr": listen.to_string()}));
    let _ = io::stdout().flush();
    let mut next = 0usize;
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let Some(backend) = to.get(next % to.len().max(1)).copied() else {
            continue;
        };
        next += 1;
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(backend) else {
                return;
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                let _ = io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            };
            let up = std::thread::spawn(move || pipe(client, server));
            pipe(s2, c2);
            let _ = up.join();
        });
    }
    json!({"listening": false})
}

/// Keeps connections open: prints `{"conns":[{"to","local"} | {"to","error"}]}`,
/// then `{"status":[{"to","ok","errno","eof"}]}` for each `check` line on
/// stdin, until stdin closes.
fn hold(to: Vec<SocketAddr>, to_mapped: Vec<std::net::SocketAddrV4>) -> serde_json::Value {
    let targets: Vec<SocketAddr> = to
        .into_iter()
        .chain(
            to_mapped
                .into_iter()
                .map(|a| SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port())),
        )
        .collect();
    let conns: Vec<(SocketAddr, io::Result<TcpStream>)> = targets
        .iter()
        .map(|t| (*t, TcpStream::connect_timeout(t, Duration::from_secs(3))))
        .collect();
    let listed: Vec<serde_json::Value> = conns
        .iter()
        .map(|(t, c)| match c {
            Ok(s) => json!({"to": t.to_string(), "local": s.local_addr().map(|a| a.to_string()).unwrap_or_default()}),
            Err(e) => json!({"to": t.to_string(), "error": e.to_string()}),
        })
        .collect();
    println!("{}", json!({ "conns": listed }));
    let _ = io::stdout().flush();
    let mut line = String::new();
    loop {
        line.clear();
        match io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim() == "check" => {}
            Ok(_) => continue,
        }
        let status: Vec<serde_json::Value> = conns
            .iter()
            .map(|(t, c)| {
                let Ok(mut s) = c.as_ref() else {
                    return json!({"to": t.to_string(), "ok": false, "errno": null, "eof": false});
                };
                let round_trip = (|| -> io::Result<bool> {
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    s.write_all(b"x")?;
                    let mut b = [0u8; 1];
                    Ok(s.read(&mut b)? == 1 && b[0] == b'x')
                })();
                match round_trip {
                    Ok(true) => json!({"to": t.to_string(), "ok": true, "errno": null, "eof": false}),
                    Ok(false) => json!({"to": t.to_string(), "ok": false, "errno": null, "eof": true}),
                    Err(e) => json!({"to": t.to_string(), "ok": false, "errno": e.raw_os_error(), "eof": false}),
                }
            })
            .collect();
        println!("{}", json!({ "status": status }));
        let _ = io::stdout().flush();
    }
    json!({"closed": true})
}
