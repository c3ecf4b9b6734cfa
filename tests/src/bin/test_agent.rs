//! `balancer-test-agent`: the agent side of the kernel tests. Loads the
//! kernel programs with `balancer_agent::ebpf::Kernel`, listens, and serves
//! the test protocol (`balancer_tests::wire`); controlled over stdin/stdout
//! (`balancer_tests::agent`). A connection without an original destination
//! is refused, as the real agent does.

use std::{
    io::{self, BufRead as _, Write as _},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_agent::{
    ebpf::{Kernel, KernelOptions},
    redirect::Redirects,
};
use balancer_tests::wire::{self, Cmd, Header, PayloadStream, HEADER_LEN};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    attach_cgroup: PathBuf,
    #[arg(long)]
    listen: SocketAddrV4,
    #[arg(long, default_value = "on")]
    fast_path: String,
    #[arg(long)]
    service: Vec<SocketAddrV4>,
    #[arg(long)]
    enroll: Vec<PathBuf>,
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    match start(&args) {
        Ok((kernel, listener)) => serve(kernel, listener),
        Err(e) => {
            say(&format!("FAILED {e:#}"));
            std::process::exit(2);
        }
    }
}

fn start(args: &Args) -> anyhow::Result<(Kernel, TcpListener)> {
    let opts = KernelOptions {
        attach_cgroup: Some(args.attach_cgroup.clone()),
        fast_path: args.fast_path == "on",
        ..KernelOptions::new(args.listen)
    };
    let mut kernel = Kernel::load(&opts)?;
    let vips: Vec<SocketAddr> = args.service.iter().map(|s| SocketAddr::V4(*s)).collect();
    kernel.set_services(&vips)?;
    kernel.set_enrolled(&args.enroll)?;
    let listener = TcpListener::bind(args.listen)?;
    Ok((kernel, listener))
}

fn serve(mut kernel: Kernel, listener: TcpListener) {
    let redirects = kernel.redirects();
    say(&format!("READY {}", kernel_listen(&listener)));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let redirects = redirects.clone();
            std::thread::spawn(move || {
                let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                if let Err(e) = handle(conn, redirects.as_ref()) {
                    tracing::warn!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    });
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = control(&mut kernel, line.trim()).unwrap_or_else(|e| format!("error {e:#}"));
        say(&format!("RESP {reply}"));
    }
}

fn kernel_listen(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

fn list(arg: &str) -> impl Iterator<Item = &str> {
    arg.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn control(kernel: &mut Kernel, line: &str) -> anyhow::Result<String> {
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    Ok(match cmd {
        "counters" => balancer_tests::agent::counters_to_json(&kernel.counters()?).to_string(),
        "fast-path" => {
            kernel.set_fast_path(arg == "on")?;
            "ok".into()
        }
        "services" => {
            let vips = list(arg).map(str::parse).collect::<Result<Vec<SocketAddr>, _>>()?;
            kernel.set_services(&vips)?;
            "ok".into()
        }
        "enroll" => {
            let dirs: Vec<PathBuf> = list(arg).map(PathBuf::from).collect();
            kernel.set_enrolled(&dirs)?;
            "ok".into()
        }
        "connect" => {
            let to: SocketAddr = arg.parse()?;
            match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(s) => format!("ok {}", s.peer_addr()?),
                Err(e) => format!("err {} {e}", e.raw_os_error().unwrap_or(0)),
            }
        }
        "programs" => {
            let names: Vec<String> = kernel
                .programs()
                .iter()
                .map(|p| format!("{}:{}", p.name, p.id))
                .collect();
            names.join(",")
        }
        other => anyhow::bail!("unknown command {other:?}"),
    })
}

fn handle(mut conn: TcpStream, redirects: &dyn Redirects) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let Some(orig) = redirects.original_dst(conn.as_fd())? else {
        // Never an open proxy: reset and forget.
        say(&format!("EVENT refused {}", conn.peer_addr()?));
        set_linger_zero(&conn);
        return Ok(());
    };
    wire::write_all(&mut conn, format!("ORIG {orig}\n").as_bytes(), deadline)?;
    let mut head = [0u8; HEADER_LEN];
    wire::read_exact(&mut conn, &mut head, deadline)?;
    let header = Header::decode(&head).ok_or_else(|| io::Error::other("bad header"))?;
    match header.cmd {
        Cmd::Echo => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = wire::read_some(&mut conn, &mut buf, deadline)?;
                if n == 0 {
                    break;
                }
                wire::write_all(&mut conn, &buf[..n], deadline)?;
            }
            conn.shutdown(Shutdown::Write)?;
        }
        Cmd::Verify => {
            let verdict = verify(&mut conn, header, deadline)?;
            wire::write_all(&mut conn, verdict.as_bytes(), deadline)?;
            conn.shutdown(Shutdown::Write)?;
        }
        Cmd::Stall | Cmd::Hold => {
            let mut buf = vec![0u8; header.len.min(16 << 20) as usize];
            wire::read_exact(&mut conn, &mut buf, deadline)?;
            if header.cmd == Cmd::Stall {
                redirects.leave_fast_path(conn.as_fd());
                wire::write_all(&mut conn, b"LEFT\n", deadline)?;
            } else {
                wire::write_all(&mut conn, b"HELD\n", deadline)?;
            }
            // Stop reading; hold the connection until the client hangs up.
            wait_hangup(&conn, Duration::from_secs(60));
        }
    }
    Ok(())
}

fn verify(conn: &mut TcpStream, header: Header, deadline: Instant) -> io::Result<String> {
    let mut expected = PayloadStream::new(header.seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut at: u64 = 0;
    loop {
        let n = wire::read_some(conn, &mut buf, deadline)?;
        if n == 0 {
            break;
        }
        let in_payload = (header.len.saturating_sub(at)).min(n as u64) as usize;
        expected.fill(&mut want[..in_payload]);
        if let Some(i) = (0..in_payload).find(|&i| buf[i] != want[i]) {
            return Ok(format!("BAD {} mismatch\n", at + i as u64));
        }
        if in_payload < n {
            return Ok(format!("BAD {} extra-bytes\n", at + in_payload as u64));
        }
        at += n as u64;
    }
    if at != header.len {
        return Ok(format!("BAD {at} short\n"));
    }
    Ok(format!("OK {at}\n"))
}

fn set_linger_zero(conn: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn wait_hangup(conn: &TcpStream, max: Duration) {
    let mut pfd = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        if n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
    }
}
