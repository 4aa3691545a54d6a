//! A coarse timer for hyper's HTTP/1.1 header-read timeout.
//!
//! hyper arms that timeout each time it waits for a request head, so once per
//! request on a keep-alive connection, and drops it when the head arrives.
//! With tokio's timer (a runtime handle looked up, a timer entry registered
//! and removed) the timeout cost 1.5k instructions per relayed call over no
//! timeout at all; with this one 1.0k, the sleep itself about 0.4k of it
//! (callgrind, h1, one worker: 41.0k → 40.5k per call). The deadline is long
//! (`header_read_timeout`, 10 s by default) and almost never reached, so
//! precision does not matter: a sleep is a deadline in its worker thread's
//! slab, which the worker checks on the tick it runs anyway
//! (`listen::Workers`). A timeout fires about one tick late: the tick is
//! half of `header_read_timeout`, between 10 ms and 1 s, and later on a
//! worker too busy to keep it. Ticks run on tokio's clock and deadlines
//! on the real one: under tokio's paused test clock nothing fires.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// The sleeps of one worker thread.
#[derive(Default)]
pub struct Wheel {
    slab: Mutex<Slab>,
}

#[derive(Default)]
struct Slab {
    /// `None`: a free slot (listed in `free`).
    entries: Vec<Option<(Instant, Waker)>>,
    free: Vec<usize>,
}

impl Wheel {
    fn lock(&self) -> MutexGuard<'_, Slab> {
        self.slab
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes every sleep whose deadline has passed (it then sees so when
    /// polled, and frees its slot).
    pub fn fire(&self, now: Instant) {
        let due: Vec<Waker> = self
            .lock()
            .entries
            .iter()
            .flatten()
            .filter(|(deadline, _)| *deadline <= now)
            .map(|(_, w)| w.clone())
            .collect();
        for w in due {
            w.wake();
        }
    }

    /// Sleeps waiting in this wheel.
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.entries.len() - s.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

thread_local! {
    static CURRENT: RefCell<Option<CoarseTimer>> = const { RefCell::new(None) };
}

/// A `hyper::rt::Timer` over one worker's `Wheel`.
#[derive(Clone)]
pub struct CoarseTimer(Arc<Wheel>);

impl CoarseTimer {
    /// Makes `wheel` this thread's (a worker's, which fires it).
    pub fn install(wheel: Arc<Wheel>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(CoarseTimer(wheel)));
    }

    /// This thread's timer, if it is a worker's.
    pub fn current() -> Option<CoarseTimer> {
        CURRENT.with(|c| c.borrow().clone())
    }
}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep {
            wheel: self.0.clone(),
            deadline,
            slot: None,
        })
    }
}

struct CoarseSleep {
    wheel: Arc<Wheel>,
    deadline: Instant,
    /// Where its waker is while it waits (only after its first poll).
    slot: Option<usize>,
}

impl hyper::rt::Sleep for CoarseSleep {}

impl CoarseSleep {
    fn release(&mut self) {
        if let Some(i) = self.slot.take() {
            let mut s = self.wheel.lock();
            s.entries[i] = None;
            s.free.push(i);
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            this.release();
            return Poll::Ready(());
        }
        let mut s = this.wheel.lock();
        match this.slot {
            Some(i) => {
                if let Some((_, w)) = &mut s.entries[i]
                    && !w.will_wake(cx.waker())
                {
                    *w = cx.waker().clone();
                }
            }
            None => {
                let entry = Some((this.deadline, cx.waker().clone()));
                let i = match s.free.pop() {
                    Some(i) => {
                        s.entries[i] = entry;
                        i
                    }
                    None => {
                        s.entries.push(entry);
                        s.entries.len() - 1
                    }
                };
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, task::Wake};

    use hyper::rt::Timer;

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn sleeps_wake_on_the_first_tick_past_their_deadline_and_free_their_slot() {
        let wheel = Arc::new(Wheel::default());
        let timer = CoarseTimer(wheel.clone());
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let woken = || count.0.load(std::sync::atomic::Ordering::SeqCst);
        let start = Instant::now();
        let hour = Duration::from_secs(3600);

        let mut one = timer.sleep_until(start + hour);
        let mut two = timer.sleep_until(start + 2 * hour);
        assert!(wheel.is_empty(), "nothing registered before a poll");
        assert!(one.as_mut().poll(&mut cx).is_pending());
        assert!(two.as_mut().poll(&mut cx).is_pending());
        assert!(one.as_mut().poll(&mut cx).is_pending(), "polled again");
        assert_eq!(wheel.len(), 2);

        // Ticks (their time given) wake what is due, and only that.
        wheel.fire(start);
        assert_eq!(woken(), 0);
        wheel.fire(start + hour);
        assert_eq!(woken(), 1);
        wheel.fire(start + 2 * hour);
        assert_eq!(woken(), 3, "a sleep not yet polled again is woken again");

        // A dropped sleep frees its slot, which the next one takes.
        drop(one);
        assert_eq!(wheel.len(), 1);
        let mut three = timer.sleep(hour);
        assert!(three.as_mut().poll(&mut cx).is_pending());
        assert_eq!(wheel.lock().entries.len(), 2, "no new slot");

        // A deadline already past is ready at once and holds no slot.
        let mut past = timer.sleep_until(start);
        assert!(past.as_mut().poll(&mut cx).is_ready());
        drop((two, three));
        assert!(wheel.is_empty());
    }
}
