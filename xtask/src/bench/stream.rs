//! Throughput of large messages: unary `SayHello` calls whose request carries
//! a 256 KiB name; the greeter echoes it, so as many bytes come back.

use std::{fs, path::Path, time::Duration};

use anyhow::Context;

use super::{
    load::Load,
    paths::{CallPath, Env},
    Settings,
};
use crate::netns;

pub const MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Request payload, MB (10^6 bytes) per second; replies carry as much.
    pub mb_per_sec: f64,
    pub calls: u64,
    pub failed: u64,
}

/// A gRPC frame holding `HelloRequest{name: "x" * n}`.
pub fn hello_body(n: usize) -> Vec<u8> {
    let mut msg = vec![0x0a];
    let mut len = n as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            msg.push(byte);
            break;
        }
        msg.push(byte | 0x80);
    }
    msg.resize(msg.len() + n, b'x');
    let mut frame = vec![0];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

pub fn measure(env: &Env, path: CallPath, _bin: &Path, s: &Settings) -> anyhow::Result<Throughput> {
    let body = env.dir.join("large.bin");
    fs::write(&body, hello_body(MESSAGE_BYTES))?;
    super::procs::wait_idle(0.3, Duration::from_secs(20));
    let running = env.start(path)?;
    // 2,000 calls (500 MB each way) in a full run, a tenth with --quick.
    let calls = (s.calls / 100).clamp(200, 2_000);
    let load = Load {
        calls,
        connections: 4,
        streams: 4,
        target: &running.target,
        body: &body,
        dir: &env.dir,
    };
    let args = load.args(true);
    let mut cmd = match (&env.pod, running.in_pod) {
        (Some(pod), true) => netns::in_pod(&pod.cgroup, pod.net.name(), Path::new("h2load"), &args),
        _ => {
            let mut c = std::process::Command::new("h2load");
            c.args(&args);
            c
        }
    };
    let m = load
        .run(&mut cmd, Duration::from_secs(120))
        .with_context(|| format!("bench: large messages through {}", path.key()))?;
    Ok(Throughput {
        mb_per_sec: m.succeeded as f64 * MESSAGE_BYTES as f64 / m.secs.max(1e-9) / 1e6,
        calls,
        failed: m.failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_body_is_one_grpc_frame_of_a_hello_request() {
        let b = hello_body(MESSAGE_BYTES);
        // field 1, length as a 3-byte varint, then the name
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len, b.len() - 5);
        assert_eq!(len, 1 + 3 + MESSAGE_BYTES);
        assert_eq!(&b[5..9], &[0x0a, 0x80, 0x80, 0x10]);
        assert_eq!(
            hello_body(5),
            vec![0, 0, 0, 0, 7, 0x0a, 5, b'x', b'x', b'x', b'x', b'x']
        );
    }
}
