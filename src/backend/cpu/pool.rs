//! The CPU backend's fork/join pool.
//!
//! A training step at batch 32 is a chain of 10–100 µs pieces of work. rayon
//! parks an idle worker within microseconds, and waking a parked thread costs
//! 10–50 µs on a virtual machine: on this project's 2-core VM `rayon::join`
//! of two 10 µs tasks took 20–70 µs, slower than running them one after the
//! other, while a worker that was still spinning took them in 10–11 µs. So,
//! as OpenMP, OpenBLAS and Eigen's pools do, the workers here spin for a
//! short while (`SPIN`) after each job before they park: the next fork of a
//! training step finds them running.
//!
//! One job runs at a time. A job submitted while another is running (from
//! another thread, or from inside a task) runs whole on its caller's thread,
//! which is always correct and rarely slower: the cores are busy anyway.
//!
//! `WGRAD_NUM_THREADS` sets the number of threads (caller included); it
//! defaults to the number of cores.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long a worker keeps polling for the next job before it parks. Long
/// enough to bridge the gaps between the parallel pieces of a small training
/// step, short enough that an idle worker soon gives its core back. Measured
/// on this project's VM (seed MNIST epoch, 10 runs each): 50 and 100 µs ran
/// at 0.046–0.06 s, while 200 and 500 µs fell into 0.11–0.15 s in 3–4 runs out
/// of 10 (the VM slowed both threads), worse than one thread's 0.08 s.
const SPIN: Duration = Duration::from_micros(100);

/// One fork: tasks `0..tasks`, claimed one at a time by whoever is free.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= self.tasks {
                return;
            }
            (self.f)(i);
        }
    }
}

struct Pool {
    /// Threads besides the caller's.
    workers: usize,
    /// Held by the thread whose job is running.
    owner: Mutex<()>,
    /// The running job (a `*const Job` with its lifetime erased), or null.
    job: AtomicPtr<()>,
    /// Bumped for every new job; workers poll it.
    epoch: AtomicU64,
    /// Workers that may be looking at `job`.
    active: AtomicUsize,
    /// Parked workers, and what they park on.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers: threads() - 1,
            owner: Mutex::new(()),
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 0..pool.workers {
            let spawned = std::thread::Builder::new().name(format!("wgrad-cpu-{i}")).spawn(move || pool.worker());
            // Without the thread its share of each job runs on the caller.
            drop(spawned);
        }
        pool
    })
}

/// The number of threads the CPU backend computes on, the caller's included.
pub(crate) fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("WGRAD_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .min(256)
    })
}

impl Pool {
    fn worker(&self) {
        let mut seen = self.epoch.load(SeqCst);
        let mut idle_since = Instant::now();
        let mut polls = 0u32;
        loop {
            let epoch = self.epoch.load(Acquire);
            if epoch != seen {
                seen = epoch;
                // Announce before looking, so the owner waits for us before
                // its job (on its stack) goes away; see `run`.
                self.active.fetch_add(1, SeqCst);
                let job = self.job.load(SeqCst);
                if !job.is_null() {
                    // SAFETY: a non-null `job` stays alive until `active`
                    // drops back to zero, which our increment prevents.
                    let job = unsafe { &*(job as *const Job) };
                    if catch_unwind(AssertUnwindSafe(|| job.work())).is_err() {
                        job.panicked.store(true, Relaxed);
                    }
                }
                self.active.fetch_sub(1, SeqCst);
                idle_since = Instant::now();
                continue;
            }
            polls = polls.wrapping_add(1);
            if polls % 64 == 0 && idle_since.elapsed() > SPIN {
                let guard = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
                self.sleepers.fetch_add(1, SeqCst);
                let guard =
                    self.wake.wait_while(guard, |_| self.epoch.load(SeqCst) == seen).unwrap_or_else(|p| p.into_inner());
                self.sleepers.fetch_sub(1, SeqCst);
                drop(guard);
                idle_since = Instant::now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Calls `f(i)` once for every `i` in `0..tasks`, on all threads of the pool
/// when it is free, and returns when every call has returned. A panic in a
/// task is re-raised here.
pub(crate) fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks <= 1 || threads() == 1 {
        (0..tasks).for_each(f);
        return;
    }
    let pool = pool();
    let _owner = match pool.owner.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            (0..tasks).for_each(f);
            return;
        }
    };
    let job = Job { f, tasks, next: AtomicUsize::new(0), panicked: AtomicBool::new(false) };
    pool.job.store(&job as *const Job as *mut (), SeqCst);
    // From here the job must be withdrawn before this frame ends, however
    // it ends.
    let retire = Retire(pool);
    pool.epoch.fetch_add(1, SeqCst);
    if pool.sleepers.load(SeqCst) > 0 {
        let _guard = pool.sleep.lock().unwrap_or_else(|p| p.into_inner());
        pool.wake.notify_all();
    }
    /// Withdraws the job and waits until no worker can still reach it, also
    /// when the caller's own share panics.
    struct Retire<'p>(&'p Pool);
    impl Drop for Retire<'_> {
        fn drop(&mut self) {
            // With the job withdrawn first (SeqCst), a worker that announces
            // itself later finds null; one that announced earlier is counted.
            self.0.job.store(std::ptr::null_mut(), SeqCst);
            while self.0.active.load(SeqCst) != 0 {
                std::hint::spin_loop();
            }
        }
    }
    job.work();
    drop(retire);
    assert!(!job.panicked.load(Relaxed), "a wgrad CPU worker thread panicked");
}

/// A mutable slice cut into `chunk`-long pieces that tasks of one [`run`]
/// take by index.
pub(crate) struct Chunks<'a> {
    ptr: *mut f32,
    len: usize,
    chunk: usize,
    _slice: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `Chunks` hands out disjoint pieces of a `&mut [f32]` (see `get`).
unsafe impl Send for Chunks<'_> {}
unsafe impl Sync for Chunks<'_> {}

impl<'a> Chunks<'a> {
    pub(crate) fn new(slice: &'a mut [f32], chunk: usize) -> Self {
        Chunks { ptr: slice.as_mut_ptr(), len: slice.len(), chunk: chunk.max(1), _slice: std::marker::PhantomData }
    }

    /// How many pieces there are.
    pub(crate) fn count(&self) -> usize {
        self.len.div_ceil(self.chunk)
    }

    /// Where piece `i` starts and ends, checked to lie inside the slice
    /// with arithmetic that cannot wrap (`i < count` bounds `i · chunk` by
    /// `len`).
    fn bounds(&self, i: usize) -> (usize, usize) {
        assert!(i < self.count(), "Chunks::get: piece {i} of {}", self.count());
        let start = i * self.chunk;
        (start, start.saturating_add(self.chunk).min(self.len))
    }

    /// Piece `i`.
    ///
    /// # Safety
    /// Each index may be taken once while the pieces live: [`run`] calls
    /// each task index exactly once, so taking piece `i` in task `i` is sound.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self, i: usize) -> &'a mut [f32] {
        let (start, end) = self.bounds(i);
        // SAFETY: in bounds by `bounds`; disjoint by the contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        for tasks in [0, 1, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            run(tasks, &|i| {
                hits[i].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "{tasks} tasks");
        }
    }

    #[test]
    fn nested_and_concurrent_jobs_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        run(4, &|_| run(5, &|_| _ = total.fetch_add(1, Relaxed)));
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 3 * 200 * 4 * 5);
    }

    #[test]
    fn chunks_cover_the_slice() {
        let mut v = vec![0.0f32; 1001];
        let chunks = Chunks::new(&mut v, 100);
        assert_eq!(chunks.count(), 11);
        // SAFETY: task i takes piece i only.
        run(chunks.count(), &|i| unsafe { chunks.get(i) }.iter_mut().for_each(|x| *x += i as f32 + 1.0));
        assert!(v.iter().enumerate().all(|(j, &x)| x == (j / 100) as f32 + 1.0));
    }

    #[test]
    fn chunk_bounds_stay_inside_the_slice_near_usize_max() {
        let mut v = vec![0.0f32; 10];
        // A chunk size near usize::MAX: one piece, the whole slice, and no
        // `start + chunk` overflow.
        let one = Chunks::new(&mut v, usize::MAX - 1);
        assert_eq!(one.count(), 1);
        assert_eq!(one.bounds(0), (0, 10));
        let ragged = Chunks::new(&mut v, 4);
        assert_eq!((ragged.count(), ragged.bounds(2)), (3, (8, 10)));
        // An index past the pieces is refused before any pointer is formed
        // (with usize::MAX, `i · chunk` would wrap to a small offset).
        for i in [3, usize::MAX] {
            assert!(catch_unwind(AssertUnwindSafe(|| ragged.bounds(i))).is_err(), "piece {i}");
        }
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_survives() {
        let r = catch_unwind(|| {
            run(8, &|i| {
                if i == 5 {
                    panic!("task 5");
                }
            })
        });
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        run(8, &|_| _ = count.fetch_add(1, Relaxed));
        assert_eq!(count.load(Relaxed), 8);
    }
}
