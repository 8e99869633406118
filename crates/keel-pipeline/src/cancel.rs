//! Cancellation that wakes every blocked stage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam::channel::{Receiver, Sender};

type Callback = Box<dyn Fn() + Send + Sync>;

struct Inner {
    flag: AtomicBool,
    // Dropping this sender disconnects `rx`, which makes every `select!` waiting on it ready.
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
    callbacks: Mutex<Vec<Callback>>,
}

/// A cancellation signal shared by the runner, its stages and the CLI (Ctrl-C).
///
/// Cancelling sets a flag, disconnects a channel that stages `select!` on together with their data
/// channels (so a stage blocked in `recv` or `send` wakes at once), and runs registered callbacks
/// (policy stores use one to wake their waiters). Cloning shares the signal.
#[derive(Clone)]
pub struct CancelHandle(Arc<Inner>);

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl Default for CancelHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelHandle {
    /// A fresh, un-cancelled signal.
    pub fn new() -> Self {
        let (tx, rx) = crossbeam::channel::bounded(0);
        CancelHandle(Arc::new(Inner {
            flag: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            rx,
            callbacks: Mutex::new(Vec::new()),
        }))
    }

    /// Cancels; idempotent and safe to call from a signal-handling thread.
    pub fn cancel(&self) {
        if self.0.flag.swap(true, Ordering::SeqCst) {
            return;
        }
        self.0.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let callbacks = std::mem::take(&mut *self.0.callbacks.lock().unwrap_or_else(|p| p.into_inner()));
        for cb in callbacks {
            cb();
        }
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Runs `f` when cancelled (at once if already cancelled).
    pub fn on_cancel(&self, f: impl Fn() + Send + Sync + 'static) {
        {
            let mut cbs = self.0.callbacks.lock().unwrap_or_else(|p| p.into_inner());
            if !self.is_cancelled() {
                cbs.push(Box::new(f));
                return;
            }
        }
        f();
    }

    /// A channel that becomes disconnected (hence ready in `select!`) on cancellation.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.0.rx
    }

    /// Makes `child` cancel when `self` does, without keeping `child` alive.
    pub(crate) fn link_child(&self, child: &CancelHandle) {
        let weak = Arc::downgrade(&child.0);
        self.on_cancel(move || {
            if let Some(inner) = weak.upgrade() {
                CancelHandle(inner).cancel();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn cancel_wakes_a_blocked_select() {
        let c = CancelHandle::new();
        let (_tx, rx) = crossbeam::channel::bounded::<i32>(1);
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            crossbeam::channel::select! {
                recv(rx) -> _ => "data",
                recv(c2.receiver()) -> _ => { let _ = start; "cancelled" },
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        c.cancel();
        assert_eq!(t.join().unwrap(), "cancelled");
        assert!(c.is_cancelled());
    }

    #[test]
    fn children_follow_parents() {
        let parent = CancelHandle::new();
        let child = CancelHandle::new();
        parent.link_child(&child);
        assert!(!child.is_cancelled());
        parent.cancel();
        assert!(child.is_cancelled());
    }
}
