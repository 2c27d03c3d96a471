//! What the io_uring backend refuses to open, with the error that names the problem.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kiseki_devices::{DeviceError, IoUringDevice, OpenOptions};
use tempfile::TempDir;

use crate::support::{self, BLOCK_BYTES, assert_message};

/// Options that open a small device: a few buffers, so that refusals never hit the
/// locked-memory limit first.
fn small_options() -> OpenOptions {
    OpenOptions { buffer_count: 2, buffer_size_bytes: BLOCK_BYTES, ..OpenOptions::default() }
}

fn scratch_dir() -> TempDir {
    tempfile::tempdir_in(support::direct_io_dir()).expect("creating a temporary directory")
}

fn open_error(path: &Path, options: &OpenOptions) -> DeviceError {
    match IoUringDevice::open(path, options) {
        Ok(device) => panic!("{} opened, but must be refused: {device:?}", path.display()),
        Err(error) => error,
    }
}

#[test]
fn refuses_a_missing_path() {
    let dir = scratch_dir();
    let path = dir.path().join("absent");
    let error = open_error(&path, &small_options());
    assert!(matches!(&error, DeviceError::PathMissing { path: p } if *p == path), "{error:?}");
    assert_message(&error, &[&path.display().to_string(), "no such file"]);
    assert!(!path.exists(), "open without `create` creates nothing");

    // A path through a regular file (ENOTDIR) is missing too.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("writing a file");
    let through = file.join("device");
    let error = open_error(&through, &small_options());
    assert!(matches!(&error, DeviceError::PathMissing { path: p } if *p == through), "{error:?}");
}

#[test]
fn refuses_a_size_larger_than_the_file() {
    let dir = scratch_dir();
    let path = dir.path().join("device");
    let create = OpenOptions { create: true, size_bytes: Some(1 << 20), ..small_options() };
    drop(IoUringDevice::open(&path, &create).expect("creating a 1 MiB device"));
    let options = OpenOptions { size_bytes: Some(2 << 20), ..small_options() };
    let error = open_error(&path, &options);
    assert!(
        matches!(
            &error,
            DeviceError::TooSmall { size_bytes: 1048576, required_bytes: 2097152, .. }
        ),
        "{error:?}"
    );
    assert_message(&error, &["too small", "1048576", "2097152"]);
}

#[test]
fn refuses_a_file_smaller_than_one_block() {
    let dir = scratch_dir();
    for len in [0, 100, BLOCK_BYTES as usize - 1] {
        let path = dir.path().join(format!("device-{len}"));
        std::fs::write(&path, vec![1; len]).expect("writing a short file");
        let error = open_error(&path, &small_options());
        assert!(
            matches!(
                &error,
                DeviceError::TooSmall { size_bytes, required_bytes: 4096, .. }
                    if *size_bytes == len as u64
            ),
            "{len} bytes: {error:?}"
        );
        assert_message(&error, &["too small", "4096"]);
    }
}

#[test]
fn refuses_what_is_neither_a_file_nor_a_block_device() {
    let dir = scratch_dir();
    // A directory, and a character device (only its metadata is read; nothing is opened).
    for path in [dir.path(), Path::new("/dev/null")] {
        let error = open_error(path, &small_options());
        assert!(
            matches!(&error, DeviceError::NotFileOrBlockDevice { path: p } if p == path),
            "{}: {error:?}",
            path.display()
        );
        assert_message(&error, &["neither a regular file nor a block device"]);
    }
}

#[test]
fn refuses_a_buffer_size_not_a_multiple_of_the_block() {
    let dir = scratch_dir();
    let path = dir.path().join("device");
    let create = OpenOptions { create: true, size_bytes: Some(1 << 20), ..small_options() };
    drop(IoUringDevice::open(&path, &create).expect("creating a 1 MiB device"));
    for buffer_size_bytes in [512, 6144] {
        let error = open_error(&path, &OpenOptions { buffer_size_bytes, ..small_options() });
        assert!(matches!(error, DeviceError::InvalidOptions { .. }), "{error:?}");
        assert_message(&error, &[&buffer_size_bytes.to_string(), "4096"]);
    }
}

#[test]
fn refuses_to_create_without_a_size() {
    let dir = scratch_dir();
    let path = dir.path().join("device");
    let error = open_error(&path, &OpenOptions { create: true, ..small_options() });
    assert!(matches!(error, DeviceError::InvalidOptions { .. }), "{error:?}");
    assert_message(&error, &["no size"]);
    assert!(!path.exists(), "a refused create leaves no file");
}

/// A writable regular file on a file system without O_DIRECT must be refused at open.
///
/// Which file system: ramfs has no direct I/O on any kernel (tmpfs gained it in 6.6, and
/// FUSE is not available here), so the test mounts a ramfs on a temporary directory and
/// unmounts it afterwards. Mounting needs CAP_SYS_ADMIN: as root with it (CI) a failed
/// mount fails the test; without it the test says so on stderr and checks only the weaker
/// case below. Either way it also opens a procfs file read-only, which every kernel refuses
/// with O_DIRECT and which needs no privilege.
#[test]
fn refuses_a_file_system_without_direct_io() {
    match RamfsMount::new() {
        Ok(mount) => {
            let path = mount.path().join("device");
            std::fs::write(&path, vec![0; 1 << 20]).expect("writing a file on ramfs");
            let error = open_error(&path, &small_options());
            assert_direct_io_unsupported(&error, &path);
        }
        Err(why) if may_mount() => {
            panic!("running with CAP_SYS_ADMIN, yet mounting a ramfs failed: {why}")
        }
        Err(why) => eprintln!(
            "NOTE: not checked on a writable file: cannot mount a ramfs without \
             CAP_SYS_ADMIN ({why}); checking a read-only procfs file only"
        ),
    }
    let proc_file = Path::new("/proc/version");
    let error = open_error(proc_file, &OpenOptions { read_only: true, ..small_options() });
    assert_direct_io_unsupported(&error, proc_file);
}

fn assert_direct_io_unsupported(error: &DeviceError, path: &Path) {
    assert!(
        matches!(error, DeviceError::DirectIoUnsupported { path: p } if p == path),
        "{}: {error:?}",
        path.display()
    );
    assert_message(error, &[&path.display().to_string(), "O_DIRECT"]);
}

/// Whether this process may mount: root with CAP_SYS_ADMIN in its effective set.
fn may_mount() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    root && effective & (1 << CAP_SYS_ADMIN) != 0
}

/// A ramfs mounted on a temporary directory; unmounted (lazily, so that a file still open
/// cannot keep it) and removed on drop.
struct RamfsMount {
    dir: TempDir,
}

impl RamfsMount {
    fn new() -> Result<RamfsMount, std::io::Error> {
        let dir = tempfile::Builder::new().prefix("kiseki-ramfs-").tempdir()?;
        let target = c_path(dir.path());
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call; ramfs
        // takes no data argument, so null is allowed there.
        let rc = unsafe {
            libc::mount(
                c"ramfs".as_ptr(),
                target.as_ptr(),
                c"ramfs".as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RamfsMount { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RamfsMount {
    fn drop(&mut self) {
        let target = c_path(self.dir.path());
        // SAFETY: `target` is a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            eprintln!("unmounting the ramfs at {}: {error}", self.dir.path().display());
        }
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a temporary path has no NUL byte")
}
