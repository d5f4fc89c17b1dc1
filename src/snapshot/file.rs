//! The snapshot file: written front to back in whole aligned blocks with direct I/O, synced
//! once at the end.
//!
//! Unlike a log segment, a snapshot file is not durable piece by piece: nothing refers to it
//! until it is complete, synced and renamed, so it is opened with `O_DIRECT` but without
//! `O_DSYNC`, and one `fdatasync` at the end makes all of it durable. Direct I/O keeps a
//! multi-gigabyte snapshot out of the page cache (it would otherwise evict the memory the cache
//! itself needs). On filesystems without O_DIRECT the buffered fallback of the log is used.
//!
//! Direct writes and the final sync are blocking calls on the shard's blocking thread, as the
//! log's are (`wal::file` explains why not glommio's `DmaFile`: it kept the executor spinning
//! during every write).

use crate::wal::file::{io_err, AlignedBuf, FaultPlan, IoMode};
use glommio::io::{BufferedFile, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use super::format::BLOCK_SIZE;

enum Inner {
    Direct(Arc<std::fs::File>),
    Buffered(BufferedFile),
}

/// A snapshot file being written.
pub struct SnapshotFile {
    inner: Inner,
    path: PathBuf,
    pos: u64,
    faults: Option<Rc<FaultPlan>>,
}

impl SnapshotFile {
    /// Creates `path`, replacing a file of that name (a temporary file left by a crash).
    pub async fn create(path: &Path, mode: IoMode, faults: Option<Rc<FaultPlan>>) -> io::Result<SnapshotFile> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut o = OpenOptions::new();
        o.read(true).write(true).create_new(true);
        let inner = match mode {
            IoMode::Direct => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut o = std::fs::OpenOptions::new();
                o.read(true).write(true).create_new(true).custom_flags(libc::O_DIRECT);
                let path = path.to_path_buf();
                Inner::Direct(Arc::new(glommio::executor().spawn_blocking(move || o.open(path)).await?))
            }
            IoMode::Buffered => Inner::Buffered(o.buffered_open(path).await.map_err(io_err)?),
        };
        Ok(SnapshotFile { inner, path: path.to_path_buf(), pos: 0, faults })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn written_bytes(&self) -> u64 {
        self.pos
    }

    /// Writes the whole blocks at the front of `buf` and leaves the rest (less than a block) in
    /// it.
    pub async fn write_blocks(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let whole = buf.len() / BLOCK_SIZE * BLOCK_SIZE;
        if whole == 0 {
            return Ok(());
        }
        self.write_exact(&buf[..whole]).await?;
        buf.drain(..whole);
        Ok(())
    }

    async fn write_exact(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some(f) = &self.faults {
            f.check_snapshot()?;
        }
        let n = match &self.inner {
            Inner::Direct(f) => {
                let (f, b, pos, len) = (f.clone(), AlignedBuf::copy_of(data)?, self.pos, data.len());
                glommio::executor().spawn_blocking(move || f.write_all_at(b.as_slice(), pos)).await?;
                len
            }
            Inner::Buffered(f) => f.write_at(data.to_vec(), self.pos).await.map_err(io_err)?,
        };
        if n != data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("short write: {n} of {}", data.len())));
        }
        self.pos += n as u64;
        Ok(())
    }

    /// Writes the rest (`buf` must now be whole blocks: the encoder pads the footer), then
    /// fdatasyncs and closes the file.
    pub async fn finish(mut self, buf: Vec<u8>) -> io::Result<u64> {
        if buf.len() % BLOCK_SIZE != 0 {
            return Err(io::Error::other(format!("snapshot tail of {} bytes is not whole blocks", buf.len())));
        }
        if !buf.is_empty() {
            self.write_exact(&buf).await?;
        }
        match self.inner {
            Inner::Direct(f) => glommio::executor().spawn_blocking(move || f.sync_data()).await?,
            Inner::Buffered(f) => {
                f.fdatasync().await.map_err(io_err)?;
                f.close().await.map_err(io_err)?;
            }
        }
        Ok(self.pos)
    }

    /// Closes and removes the file (a failed snapshot).
    pub async fn discard(self) {
        let path = self.path.clone();
        match self.inner {
            Inner::Direct(f) => drop(f),
            Inner::Buffered(f) => drop(f.close().await),
        }
        let _ = std::fs::remove_file(&path);
    }
}
