//! The few system calls that have no safe wrapper in the crates we use:
//! open-file-description (OFD) byte-range locks, `fallocate` and `futex`.
//!
//! OFD locks belong to the open file description, not the process: two
//! `Store`s on one file in one process exclude each other, and closing some
//! other descriptor of the file does not drop them (the classic `fcntl`
//! lock pitfall that LMDB documents). The kernel drops them when the
//! description is closed, including when the process dies.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Lock bytes live far beyond any real data; they need not exist in the file.
const LOCK_BASE: i64 = 1 << 62;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockKind {
    Read,
    Write,
    Unlock,
}

fn flock_for(byte: u64, kind: LockKind) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct of integers, valid when zeroed.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
        LockKind::Unlock => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LOCK_BASE + byte as i64;
    fl.l_len = 1;
    fl.l_pid = 0; // required by OFD locks
    fl
}

/// Takes, converts or releases the OFD lock on lock byte `byte`. Returns
/// `Ok(false)` if `wait` is false and another description holds a
/// conflicting lock.
pub(crate) fn ofd_lock(file: &File, byte: u64, kind: LockKind, wait: bool) -> io::Result<bool> {
    let mut fl = flock_for(byte, kind);
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: `fl` is a valid, initialised flock that outlives the call;
        // the descriptor is open for as long as `file` is borrowed.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
        if r == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Whether another open file description holds any lock on `byte` that
/// would conflict with an exclusive lock.
pub(crate) fn ofd_held_by_others(file: &File, byte: u64) -> io::Result<bool> {
    let mut fl = flock_for(byte, LockKind::Write);
    // SAFETY: as in `ofd_lock`; F_OFD_GETLK only writes into `fl`.
    let r = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_OFD_GETLK,
            &mut fl as *mut libc::flock,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Allocates `[off, off + len)` without changing the file size. Returns
/// `ErrorKind::Unsupported` where the file system cannot.
pub(crate) fn fallocate_keep_size(file: &File, off: u64, len: u64) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_KEEP_SIZE, off, len)
}

/// Makes `[off, off + len)` read as zeros without writing them (the file
/// system marks the blocks unwritten and drops their cached pages);
/// `Unsupported` where the file system cannot.
pub(crate) fn zero_range(file: &File, off: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
}

/// Asks the kernel to read `[off, off + len)` into the page cache
/// (`POSIX_FADV_WILLNEED`). Forced readahead allocates small (4 KiB)
/// folios, unlike `read` or faults with normal advice (measured here: a
/// one-byte store through the map then wrote back 4.4 KiB, as on a page
/// never read, against 10.6 KiB after `read`), so index slots stored into
/// these pages later do not write back their neighbours.
pub(crate) fn will_need(file: &File, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: an advice call on an open descriptor with integer arguments;
    // no memory is passed.
    let r = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            off as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// The memory the kernel reckons available for new work (`MemAvailable`
/// in `/proc/meminfo`), in bytes; `None` where it cannot be read.
pub(crate) fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Deallocates `[off, off + len)` without changing the file size: the
/// range reads as zeros, its blocks go back to the file system.
/// `Unsupported` where the file system cannot.
pub(crate) fn punch_hole(file: &File, off: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
}

fn fallocate(file: &File, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on an open descriptor with integer arguments.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                mode,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => return Err(io::Error::from(io::ErrorKind::Unsupported)),
            _ => return Err(err),
        }
    }
}

/// Starts writing the dirty pages of `[off, off + len)` and returns
/// without waiting for them: the range's data only, no other dirty page of
/// the file and no journal commit (`sync_file_range(WRITE)`).
pub(crate) fn start_writeback(file: &File, off: u64, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on an open descriptor with integer arguments.
        let r = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                off as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Sleeps while the 32-bit word at `addr` holds `expected`, until woken
/// by [`futex_wake`] on the same word (from any process that maps the same
/// file page), `timeout` passes, or a signal arrives. Returns at once if the
/// word differs. Spurious returns are possible: callers re-check.
///
/// # Safety
/// `addr` must be 4-byte aligned and point into memory that stays mapped
/// for the duration of the call. The kernel only reads it.
pub(crate) unsafe fn futex_wait(addr: *const u32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the caller guarantees `addr` is aligned and mapped; `ts_ptr`
    // is null or points to a timespec that outlives the call. FUTEX_WAIT
    // without FUTEX_PRIVATE_FLAG keys the wait on the file page, so a wake
    // from another process mapping the same page reaches it. Errors
    // (EAGAIN: the word changed; ETIMEDOUT; EINTR) all mean "re-check".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            addr,
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every waiter sleeping in [`futex_wait`] on the word at `addr`.
///
/// # Safety
/// As for [`futex_wait`].
pub(crate) unsafe fn futex_wake(addr: *const u32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE does not dereference memory
    // beyond looking up the key of `addr`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            addr,
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Opens the POSIX shared-memory object `name` (which starts with `/` and
/// has no other `/`): `shm_open`, which on Linux opens `/dev/shm/<name>`.
/// With `create`, an object that does not exist yet is made with exactly
/// `mode` (set again after creation: `shm_open` applies the umask).
pub(crate) fn shm_open(name: &str, write: bool, create: bool, mode: u32) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let access = if write { libc::O_RDWR } else { libc::O_RDONLY };
    let open = |flags: libc::c_int| -> io::Result<File> {
        loop {
            // SAFETY: `cname` is a NUL-terminated string that outlives the
            // call; flags and mode are integers.
            let fd = unsafe {
                libc::shm_open(
                    cname.as_ptr(),
                    flags | libc::O_CLOEXEC,
                    mode as libc::mode_t,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` was just returned by shm_open and nothing
                // else owns it.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    };
    if create && write {
        match open(access | libc::O_CREAT | libc::O_EXCL) {
            Ok(file) => {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    open(access)
}

/// Removes the shared-memory object `name` (`shm_unlink`); processes that
/// have it open keep it until they close it.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `cname` is a NUL-terminated string that outlives the call.
    if unsafe { libc::shm_unlink(cname.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes of `[off, off + len)` that are holes or unwritten extents
/// (`FS_IOC_FIEMAP`, after syncing the file's data): what reads as zeros
/// only because the file system says so. Tests use it to tell prepared
/// space from space merely reserved. `Unsupported` where the file system
/// has no `FIEMAP`.
#[cfg(test)]
pub(crate) fn unwritten_bytes(file: &File, off: u64, len: u64) -> io::Result<u64> {
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS: usize = 64;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; EXTENTS],
    }
    let (end, mut at, mut written) = (off + len, off, 0u64);
    while at < end {
        let mut m = Fiemap {
            start: at,
            length: end - at,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: EXTENTS as u32,
            reserved: 0,
            extents: [Extent::default(); EXTENTS],
        };
        // SAFETY: `m` is a `struct fiemap` header followed by room for
        // `extent_count` extents, as the ioctl expects, and lives across
        // the call; the kernel writes only inside it.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut m) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) => io::ErrorKind::Unsupported.into(),
                _ => e,
            });
        }
        let got = &m.extents[..m.mapped_extents as usize];
        for x in got {
            let (a, b) = (x.logical.max(off), (x.logical + x.length).min(end));
            if a < b && x.flags & FIEMAP_EXTENT_UNWRITTEN == 0 {
                written += b - a;
            }
        }
        match got.last() {
            Some(x) if got.len() == EXTENTS => at = x.logical + x.length,
            _ => break,
        }
    }
    Ok(len - written)
}
