//! Locks that outlive a panicking holder.
//!
//! A thread that panics while it holds a lock (the slow path under the
//! switch lock, say) poisons it. The daemon then stops: the supervisor sees
//! the thread end within 50 ms. But stopping takes the same locks (to turn
//! the fast path off, read the last counters, answer a control request
//! that is waiting, close the ports), and `lock().unwrap()` would turn one
//! thread's panic into a panic of every thread, with nothing cleaned up. So the daemon's locks are taken through
//! [`LockOrRecover`], which hands over the guard of a poisoned lock.
//!
//! The data may be half-updated by the thread that panicked. That is
//! acceptable only because the switch is on its way down and every slot
//! lookup is bounds-checked; nothing here repairs it.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `lock`, `read` and `write` that never fail (see the module docs).
pub trait LockOrRecover<T> {
    /// The guard, poisoned or not.
    fn lock_or_recover(&self) -> MutexGuard<'_, T>;
}

impl<T> LockOrRecover<T> for Mutex<T> {
    fn lock_or_recover(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Read and write access to an `RwLock`, poisoned or not.
pub trait RwLockOrRecover<T> {
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T>;
    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockOrRecover<T> for RwLock<T> {
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_usable() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let rw = std::sync::Arc::new(RwLock::new(2));
        let (m2, rw2) = (m.clone(), rw.clone());
        let joined = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = rw2.write().unwrap();
            panic!("holder panics");
        })
        .join();
        assert!(joined.is_err());
        assert!(m.is_poisoned() && rw.is_poisoned());
        *m.lock_or_recover() += 1;
        assert_eq!(*m.lock_or_recover(), 2);
        *rw.write_or_recover() += 1;
        assert_eq!(*rw.read_or_recover(), 3);
    }
}
