//! A host-wide sysctl changed for the length of a test or benchmark, and
//! put back on every exit path.
//!
//! `net.ipv4.tcp_child_ehash_entries` is read from the namespace of the
//! task that creates a new network namespace (`tcp_set_hashinfo()` in
//! net/ipv4/tcp_ipv4.c), so a test that wants namespaces with their own
//! TCP established hash has to set it in the host's namespace, which every
//! other program on the machine shares. [`HostSysctl`] writes it, and puts
//! the previous value back when dropped, when the process panics (a panic
//! hook, which also covers a panic that aborts instead of unwinding) and on
//! SIGINT/SIGTERM (a handler that only opens, writes and closes the file).
//! Concurrent users in other processes are serialized by an `flock` on a
//! lock file, so the value saved is never another test's temporary one.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

use fivetuple_kernel::sysctl;

/// The lock file that serializes [`HostSysctl`] users across processes.
const LOCK: &str = "/run/fivetuple-test-host-sysctl.lock";

/// (key, previous value) of the guard alive in this process, for the panic
/// hook and the signal handler.
static ACTIVE: Mutex<Option<(String, String)>> = Mutex::new(None);

fn restore_active() {
    // try_lock: the hook can run while this thread holds the lock.
    if let Ok(mut slot) = ACTIVE.try_lock() {
        if let Some((key, value)) = slot.take() {
            let _ = sysctl::write(&key, &value);
        }
    }
}

/// The file and the previous value of the live guard, prepared when it is
/// set, so the signal handler only calls open/write/close (async-signal-safe).
static SIGNAL_RESTORE: AtomicPtr<(CString, Vec<u8>)> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(sig: libc::c_int) {
    let p = SIGNAL_RESTORE.swap(std::ptr::null_mut(), Ordering::SeqCst);
    // SAFETY: `p` is null or a pointer from Box::into_raw that only this
    // swap took (drop swaps it out the same way); it is leaked, not freed,
    // since the process ends here. open/write/close, signal and raise are
    // async-signal-safe; restoring the default action and re-raising ends
    // the process as the signal would have.
    unsafe {
        if let Some((path, value)) = p.as_ref() {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, value.as_ptr().cast(), value.len());
                libc::close(fd);
            }
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// A `net.*` sysctl of the host's namespace set to a test value; the
/// previous value is written back on drop, on panic and on SIGINT/SIGTERM.
/// Create it from a thread in the host's namespace (the test harness's
/// threads are, unless they called `setns`/`unshare`). Needs root.
#[derive(Debug)]
pub struct HostSysctl {
    key: String,
    previous: String,
    _lock: File,
}

impl HostSysctl {
    /// Sets `net.<key>` (e.g. `ipv4.tcp_child_ehash_entries`) to `value`
    /// after taking the cross-process lock, and reads it back. Panics,
    /// naming the key and the value, when the kernel refuses it.
    pub fn set(key: &str, value: &str) -> HostSysctl {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .unwrap_or_else(|e| panic!("open {LOCK}: {e}"));
        // SAFETY: flock on an fd we own; it blocks until the other holder is done.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {LOCK}: {}", std::io::Error::last_os_error());
        let previous = sysctl::read(key)
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_string();
        {
            let mut slot = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
            assert!(slot.is_none(), "one HostSysctl at a time in a process");
            *slot = Some((key.to_string(), previous.clone()));
        }
        let path = CString::new(sysctl::path(key).into_os_string().into_encoded_bytes())
            .expect("a sysctl path has no NUL");
        let old = SIGNAL_RESTORE.swap(
            Box::into_raw(Box::new((path, previous.clone().into_bytes()))),
            Ordering::SeqCst,
        );
        debug_assert!(old.is_null());
        install_hooks();
        let guard = HostSysctl {
            key: key.to_string(),
            previous,
            _lock: lock,
        };
        sysctl::write(key, value).unwrap_or_else(|e| panic!("{e}"));
        let back = sysctl::read(key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            back.trim(),
            value,
            "net.{key} did not take {value:?} (previous value {:?} is restored)",
            guard.previous
        );
        guard
    }

    /// The value the sysctl had before, which drop writes back.
    pub fn previous(&self) -> &str {
        &self.previous
    }
}

fn install_hooks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let next = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_active();
            next(info);
        }));
        // SAFETY: installs a handler for two signals; the handler only
        // writes a file and re-raises the signal with its default action.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        }
    });
}

impl Drop for HostSysctl {
    fn drop(&mut self) {
        let p = SIGNAL_RESTORE.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: from Box::into_raw in `set`; the swap made it ours alone.
            drop(unsafe { Box::from_raw(p) });
        }
        let mut slot = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
        // Already restored by the panic hook when it ran first.
        if slot.take().is_some() {
            if let Err(e) = sysctl::write(&self.key, &self.previous) {
                eprintln!(
                    "could not restore net.{} to {:?}: {e}",
                    self.key, self.previous
                );
            }
        }
    }
}
