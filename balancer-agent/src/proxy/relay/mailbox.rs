//! How relay connections talk: each connection task owns its connection
//! outright and others only drop messages in its mailbox. A mailbox holds no
//! heap memory while empty, and a burst of messages wakes its task once.

use std::{
    mem,
    sync::Mutex,
    task::{Context, Waker},
};

#[derive(Debug)]
pub(crate) struct Mailbox<M> {
    inner: Mutex<Inner<M>>,
}

#[derive(Debug)]
struct Inner<M> {
    queue: Vec<M>,
    waker: Option<Waker>,
    closed: bool,
}

impl<M> Default for Mailbox<M> {
    fn default() -> Self {
        Mailbox {
            inner: Mutex::new(Inner {
                queue: Vec::new(),
                waker: None,
                closed: false,
            }),
        }
    }
}

impl<M> Mailbox<M> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<M>> {
        // A panic while holding this lock cannot leave the queue half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers `msg`, or gives it back when the owner has gone.
    pub fn push(&self, msg: M) -> Result<(), M> {
        let waker = {
            let mut g = self.lock();
            if g.closed {
                return Err(msg);
            }
            g.queue.push(msg);
            if g.queue.len() == 1 {
                g.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Swaps the queued messages into `into` (which must be empty), or
    /// registers the task to be woken by the next message.
    pub fn take(&self, cx: &Context<'_>, into: &mut Vec<M>) -> bool {
        let mut g = self.lock();
        if g.queue.is_empty() {
            match &g.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => g.waker = Some(cx.waker().clone()),
            }
            return false;
        }
        mem::swap(&mut g.queue, into);
        true
    }

    /// The owner is gone: later pushes fail; what is queued is returned.
    pub fn close(&self) -> Vec<M> {
        let mut g = self.lock();
        g.closed = true;
        g.waker = None;
        mem::take(&mut g.queue)
    }

    /// Frees the queue's spare capacity (an idle connection's mailbox holds
    /// nothing).
    pub fn shrink(&self) {
        let mut g = self.lock();
        if g.queue.is_empty() {
            g.queue = Vec::new();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::Wake,
    };

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_burst_wakes_once_and_arrives_in_order() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let cx = Context::from_waker(&waker);
        let mb = Mailbox::default();
        let mut got = Vec::new();
        assert!(!mb.take(&cx, &mut got));
        for i in 0..5 {
            mb.push(i).unwrap();
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(mb.take(&cx, &mut got));
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_closed_mailbox_gives_messages_back() {
        let mb = Mailbox::default();
        mb.push(1).unwrap();
        assert_eq!(mb.close(), vec![1]);
        assert_eq!(mb.push(2), Err(2));
    }
}
