//! Streaming throughput: `balancer.test.Echo/BidiStream` calls, each a
//! stream of 64 request messages of 16 KiB that the backend echoes one by
//! one while the requests still flow (h2load sends the request stream from
//! a file and reads the reply stream).

use std::{fs, path::Path, time::Duration};

use anyhow::Context;

use super::{
    load::Load,
    paths::{CallPath, Env},
    Settings,
};

pub const MESSAGE_BYTES: usize = 16 * 1024;
pub const MESSAGES_PER_CALL: usize = 64;
const BIDI: &str = "/balancer.test.Echo/BidiStream";

#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Request payload, MB (10^6 bytes) per second; replies carry as much.
    pub mb_per_sec: f64,
    /// Bidi calls (streams) made.
    pub calls: u64,
    pub failed: u64,
}

/// `n` gRPC frames, each an `EchoRequest{payload: size bytes}`.
pub fn echo_stream(n: usize, size: usize) -> Vec<u8> {
    let mut msg = vec![0x0a];
    let mut len = size as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            msg.push(byte);
            break;
        }
        msg.push(byte | 0x80);
    }
    msg.resize(msg.len() + size, b'x');
    let mut frame = vec![0];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame.repeat(n)
}

pub fn measure(env: &Env, path: CallPath, _bin: &Path, s: &Settings) -> anyhow::Result<Throughput> {
    let body = env.dir.join("bidi.bin");
    fs::write(&body, echo_stream(MESSAGES_PER_CALL, MESSAGE_BYTES))?;
    s.calm.wait();
    let running = env.start(path)?;
    // 1,000 streams of 1 MiB each way in a full run, a tenth with --quick.
    let calls = (s.calls / 200).clamp(100, 1_000);
    let load = Load {
        calls,
        connections: 4,
        streams: 1,
        target: &running.target,
        body: &body,
        dir: &env.dir,
    };
    let args = load.args_for(BIDI, true);
    let mut cmd = match (&env.pod, running.in_pod) {
        (Some(pod), true) => pod.command(Path::new("h2load"), &args)?,
        _ => {
            let mut c = std::process::Command::new("h2load");
            c.args(&args);
            c
        }
    };
    let m = load
        .run(&mut cmd, Duration::from_secs(120))
        .with_context(|| format!("bench: bidi streams through {}", path.key()))?;
    let bytes = (MESSAGES_PER_CALL * MESSAGE_BYTES) as f64;
    Ok(Throughput {
        mb_per_sec: m.succeeded as f64 * bytes / m.secs.max(1e-9) / 1e6,
        calls,
        failed: m.failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_body_is_a_stream_of_echo_requests() {
        let b = echo_stream(3, MESSAGE_BYTES);
        let one = 5 + 1 + 3 + MESSAGE_BYTES;
        assert_eq!(b.len(), 3 * one);
        for frame in b.chunks(one) {
            // not compressed, length, field 1 (bytes) with a 3-byte varint length
            assert_eq!(frame[0], 0);
            assert_eq!(
                u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
                one - 5
            );
            assert_eq!(&frame[5..9], &[0x0a, 0x80, 0x80, 0x01]);
        }
        assert_eq!(echo_stream(1, 2), vec![0, 0, 0, 0, 4, 0x0a, 2, b'x', b'x']);
    }
}
