//! What one connection has to send: frames written in place, with large
//! DATA payloads queued between them by reference, so that a payload read
//! from one peer is written to the other without being copied; one
//! vectored write sends a run of both.

use std::{
    collections::VecDeque,
    io::IoSlice,
    ops::{Deref, DerefMut},
};

use bytes::{Buf, Bytes, BytesMut};

/// Payloads shorter than this are copied in place: a slice of the write
/// costs more than copying them.
pub(crate) const SHARE_MIN: usize = 1024;
/// Slices handed to one vectored write.
pub(crate) const MAX_SLICES: usize = 64;

#[derive(Default)]
pub(crate) struct Out {
    /// Bytes written in place. Deref gives it to the frame writers.
    buf: BytesMut,
    /// Payloads sent before the in-place byte at position `at` (counted
    /// from the first in-place byte ever queued), in order.
    shared: VecDeque<(usize, Bytes)>,
    shared_len: usize,
    /// In-place bytes already written.
    taken: usize,
}

impl Out {
    pub fn new(buf: BytesMut) -> Out {
        Out { buf, ..Out::default() }
    }

    /// Queues a payload after what is already queued.
    pub fn put_payload(&mut self, payload: Bytes) {
        if payload.len() < SHARE_MIN {
            self.buf.extend_from_slice(&payload);
        } else {
            self.shared_len += payload.len();
            self.shared.push_back((self.taken + self.buf.len(), payload));
        }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.shared_len
    }

    pub fn is_drained(&self) -> bool {
        self.buf.is_empty() && self.shared.is_empty()
    }

    /// The next bytes to write, in order, as up to `iov.len()` slices;
    /// returns how many were filled.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut inline = 0;
        for (at, payload) in &self.shared {
            let rel = at - self.taken;
            if rel > inline {
                if n == iov.len() {
                    return n;
                }
                iov[n] = IoSlice::new(&self.buf[inline..rel]);
                n += 1;
                inline = rel;
            }
            if n == iov.len() {
                return n;
            }
            iov[n] = IoSlice::new(payload);
            n += 1;
        }
        if inline < self.buf.len() && n < iov.len() {
            iov[n] = IoSlice::new(&self.buf[inline..]);
            n += 1;
        }
        n
    }

    /// `n` bytes were written.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.shared.front_mut() {
                Some((at, payload)) if *at == self.taken => {
                    let k = n.min(payload.len());
                    payload.advance(k);
                    self.shared_len -= k;
                    n -= k;
                    if payload.is_empty() {
                        self.shared.pop_front();
                    }
                }
                front => {
                    let upto = front.map_or(self.buf.len(), |(at, _)| *at - self.taken);
                    let k = n.min(upto);
                    if k == 0 {
                        debug_assert!(false, "advanced past the queued bytes");
                        return;
                    }
                    self.buf.advance(k);
                    self.taken += k;
                    n -= k;
                }
            }
        }
        if self.shared.is_empty() {
            self.taken = 0;
        }
    }

    /// Frees the buffer when nothing waits (an idle connection keeps none).
    pub fn release(&mut self) {
        if self.is_drained() {
            self.buf = BytesMut::new();
            self.shared = VecDeque::new();
            self.taken = 0;
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl Deref for Out {
    type Target = BytesMut;

    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl DerefMut for Out {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the slices say, written `step` bytes at a time.
    fn drain(out: &mut Out, step: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        while !out.is_drained() {
            let mut iov = [IoSlice::new(&[]); 3];
            let n = out.slices(&mut iov);
            let all: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
            let k = step.min(all.len());
            sent.extend_from_slice(&all[..k]);
            out.advance(k);
        }
        sent
    }

    #[test]
    fn payloads_go_out_between_frames_in_the_order_queued() {
        let big = |b: u8| Bytes::from(vec![b; 1500]);
        // (in place, bytes): frames written in place and payloads, small
        // (copied) and large (queued by reference).
        let pieces = [
            (true, Bytes::from_static(b"head1")),
            (false, big(b'a')),
            (false, big(b'b')),
            (false, Bytes::from_static(b"small")),
            (true, Bytes::from_static(b"head2")),
            (false, big(b'c')),
            (false, big(b'd')),
            (true, Bytes::from_static(b"tail")),
        ];
        let want: Vec<u8> = pieces.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        for step in [1, 7, 1000, 5000, usize::MAX] {
            let mut out = Out::default();
            for (in_place, bytes) in &pieces {
                if *in_place {
                    out.extend_from_slice(bytes);
                } else {
                    out.put_payload(bytes.clone());
                }
            }
            assert_eq!(out.pending(), want.len());
            assert_eq!(drain(&mut out, step), want, "written {step} bytes at a time");
            assert_eq!(out.pending(), 0);
        }
    }

    #[test]
    fn bytes_queued_while_writing_keep_their_place() {
        let mut out = Out::default();
        out.extend_from_slice(b"ab");
        out.put_payload(Bytes::from(vec![b'x'; 2000]));
        out.advance(1);
        out.extend_from_slice(b"cd");
        out.put_payload(Bytes::from(vec![b'y'; 2000]));
        out.advance(1500);
        out.extend_from_slice(b"e");
        let mut want = Vec::new();
        want.extend_from_slice(&[b'x'; 501]);
        want.extend_from_slice(b"cd");
        want.extend_from_slice(&[b'y'; 2000]);
        want.extend_from_slice(b"e");
        assert_eq!(drain(&mut out, 64), want);
    }

    #[test]
    fn a_drained_queue_releases_its_buffer() {
        let mut out = Out::default();
        out.extend_from_slice(&[0; 100]);
        out.advance(100);
        out.release();
        assert_eq!(out.capacity(), 0);
    }
}
