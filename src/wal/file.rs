//! The file layer under the log: direct I/O when the filesystem allows it, buffered I/O
//! otherwise, and nothing else.
//!
//! # Direct I/O
//! Segments are opened with `O_DIRECT | O_DSYNC` through glommio's `DmaFile`: every write goes
//! from an aligned buffer straight to the device and returns only once the data (and the
//! metadata needed to read it back) is durable. One write per flush is therefore also the
//! flush's sync: there is no separate `fdatasync`, which through io_uring would be punted to a
//! worker thread and cost a second round trip.
//!
//! # Fallback
//! tmpfs and some FUSE filesystems reject `O_DIRECT` (EINVAL). The log then uses a buffered
//! file and `fdatasync` after each write, and says so once in the log.
//!
//! # Directories
//! Creating, renaming or removing a file changes its directory; [`sync_dir`] makes that change
//! durable. It is a blocking `fsync` on the executor thread: rare (once per segment) and short.

use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// How a segment file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT | O_DSYNC`: each write is durable when it returns.
    Direct,
    /// Page cache plus `fdatasync` after each write (filesystems without O_DIRECT).
    Buffered,
}

/// An open segment file.
pub enum LogFile {
    Direct(DmaFile),
    Buffered(BufferedFile),
}

fn io_err(e: glommio::GlommioError<()>) -> io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

impl LogFile {
    /// Creates `path` (which must not exist) in `mode`.
    pub async fn create(path: &Path, mode: IoMode) -> io::Result<LogFile> {
        Self::open_with(path, mode, true).await
    }

    /// Opens an existing `path` for writing.
    pub async fn open(path: &Path, mode: IoMode) -> io::Result<LogFile> {
        Self::open_with(path, mode, false).await
    }

    async fn open_with(path: &Path, mode: IoMode, create: bool) -> io::Result<LogFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if create {
            o.create_new(true);
        }
        match mode {
            IoMode::Direct => {
                o.custom_flags(libc::O_DSYNC);
                o.dma_open(path).await.map(LogFile::Direct).map_err(io_err)
            }
            IoMode::Buffered => o.buffered_open(path).await.map(LogFile::Buffered).map_err(io_err),
        }
    }

    /// Writes `data` (a multiple of the block size, for direct I/O) at `pos` and makes it
    /// durable before returning.
    pub async fn write_durable(&self, data: &[u8], pos: u64) -> io::Result<()> {
        match self {
            LogFile::Direct(f) => {
                let mut buf = f.alloc_dma_buffer(data.len());
                buf.as_bytes_mut().copy_from_slice(data);
                let n = f.write_at(buf, pos).await.map_err(io_err)?;
                if n != data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: {n} of {}", data.len()),
                    ));
                }
                Ok(())
            }
            LogFile::Buffered(f) => {
                let n = f.write_at(data.to_vec(), pos).await.map_err(io_err)?;
                if n != data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: {n} of {}", data.len()),
                    ));
                }
                f.fdatasync().await.map_err(io_err)
            }
        }
    }

    /// Reserves `size` bytes on disk so later writes cannot fail for lack of space mid-segment,
    /// and makes the file's size durable.
    pub async fn preallocate(&self, size: u64) -> io::Result<()> {
        match self {
            LogFile::Direct(f) => {
                f.pre_allocate(size, false).await.map_err(io_err)?;
                f.fdatasync().await.map_err(io_err)
            }
            LogFile::Buffered(f) => {
                f.pre_allocate(size, false).await.map_err(io_err)?;
                f.fdatasync().await.map_err(io_err)
            }
        }
    }

    pub async fn close(self) -> io::Result<()> {
        match self {
            LogFile::Direct(f) => f.close().await.map_err(io_err),
            LogFile::Buffered(f) => f.close().await.map_err(io_err),
        }
    }
}

/// Whether `dir` supports O_DIRECT: creates and removes a probe file.
pub fn probe_direct_io(dir: &Path) -> io::Result<IoMode> {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-io-probe");
    let _ = std::fs::remove_file(&probe);
    let r = std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(&probe);
    let mode = match r {
        Ok(_) => IoMode::Direct,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoMode::Buffered,
        Err(e) => return Err(e),
    };
    let _ = std::fs::remove_file(&probe);
    Ok(mode)
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `contents` to `dir/name` atomically: a temporary file, fsync, rename, directory
/// fsync. Used for the `LAYOUT` file.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}
