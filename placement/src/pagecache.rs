//! A file's pages in the page cache: how many are resident (`mincore` on a read-only mapping),
//! reading them in ahead of a load, and releasing them (`posix_fadvise(POSIX_FADV_DONTNEED)`).
//!
//! Why: llama-server reads a model through the page cache. Once the weights sit in GPU memory
//! (or in llama-server's own buffers with `--no-mmap`), the cached copy is dead weight that can
//! push a large model's host into swap. The kernel only drops pages nobody maps: with mmap (the
//! default) the server's own mapping keeps them, so reclaim helps only where the server does not
//! map the file (`--no-mmap`, or weights fully offloaded to devices and the mapping released).
//! Linux only; elsewhere the calls return `Unsupported`.

use std::fs::File;
use std::io;
use std::path::Path;

/// (resident bytes, file bytes) of the file at `path`.
#[cfg(target_os = "linux")]
pub fn resident_bytes(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((0, 0));
    }
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let size = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
    // SAFETY: a fresh read-only shared mapping of a file we hold open; it is only passed to
    // mincore (which reads page-table state, never the pages) and unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let pages = len.div_ceil(page) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` maps `size` bytes and `vec` has one byte per page of it.
    let rc = unsafe { libc::mincore(addr, size, vec.as_mut_ptr()) };
    let err = io::Error::last_os_error();
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(addr, size) };
    if rc != 0 {
        return Err(err);
    }
    let resident = vec.iter().filter(|b| **b & 1 == 1).count() as u64;
    Ok(((resident * page).min(len), len))
}

/// Asks the kernel to drop the file's clean cached pages (those no process maps).
#[cfg(target_os = "linux")]
pub fn drop_cache(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(path)?;
    // SAFETY: advisory call on an open descriptor; no memory is touched.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Reads the whole file once, sequentially (with `POSIX_FADV_SEQUENTIAL`), so a server's load
/// that follows finds it cached: one long streaming read instead of mmap's page faults.
/// Returns the bytes read.
#[cfg(target_os = "linux")]
pub fn prefetch(path: &Path) -> io::Result<u64> {
    prefetch_with_progress(path, |_, _| {})
}

/// [`prefetch`], calling `on_progress(bytes read, file size)` after every 4 MiB read (the
/// progress `tightwad tune --load` shows).
#[cfg(target_os = "linux")]
pub fn prefetch_with_progress(
    path: &Path,
    mut on_progress: impl FnMut(u64, u64),
) -> io::Result<u64> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    // SAFETY: advisory call on an open descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        on_progress(total, size);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn resident_bytes(_: &Path) -> io::Result<(u64, u64)> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "page-cache residency is measured on Linux only",
    ))
}
#[cfg(not(target_os = "linux"))]
pub fn drop_cache(_: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "page-cache reclaim is Linux only",
    ))
}
#[cfg(not(target_os = "linux"))]
pub fn prefetch_with_progress(_: &Path, _: impl FnMut(u64, u64)) -> io::Result<u64> {
    prefetch(Path::new(""))
}
#[cfg(not(target_os = "linux"))]
pub fn prefetch(_: &Path) -> io::Result<u64> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "prefetch is Linux only",
    ))
}

/// Resident memory of a process from `/proc/PID/status`: (VmRSS, RssFile) in bytes. RssFile is
/// the part backed by files (a model mapped with mmap shows up there).
pub fn process_rss(pid: u32) -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("RssFile:")))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Reading a file makes it resident; dropping it makes it (mostly) not. The file is written
    /// with O_DIRECT-free ordinary writes, so it starts dirty: fsync first, then only clean pages
    /// remain, which DONTNEED can drop.
    fn on_tmpfs(path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: statfs writes into the zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC }
    }

    #[test]
    fn reclaim_lowers_residency_of_a_read_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("m.bin");
        let data = vec![7u8; 8 << 20];
        std::fs::write(&path, &data).expect("write");
        File::open(&path).and_then(|f| f.sync_all()).expect("sync");
        assert_eq!(prefetch(&path).expect("prefetch"), data.len() as u64);
        let (before, total) = resident_bytes(&path).expect("mincore");
        assert_eq!(total, data.len() as u64);
        drop_cache(&path).expect("fadvise");
        let (after, _) = resident_bytes(&path).expect("mincore");
        if on_tmpfs(dir.path()) {
            // tmpfs pages are the file itself: nothing to drop, and nothing to measure.
            eprintln!(
                "SKIPPED the drop assertion: {} is tmpfs",
                dir.path().display()
            );
        } else {
            assert!(
                before > total / 2,
                "prefetch left {before} of {total} resident"
            );
            assert!(after < total / 4, "before {before}, after {after}");
        }
        assert!(process_rss(std::process::id()).expect("rss").0 > 0);
    }
}
