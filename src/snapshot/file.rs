//! The snapshot file: written front to back in whole aligned blocks with direct I/O, synced
//! once at the end.
//!
//! Unlike a log segment, a snapshot file is not durable piece by piece: nothing refers to it
//! until it is complete, synced and renamed, so it is opened with `O_DIRECT` but without
//! `O_DSYNC`, and one `fdatasync` at the end makes all of it durable. Direct I/O keeps a
//! multi-gigabyte snapshot out of the page cache (it would otherwise evict the memory the cache
//! itself needs). On filesystems without O_DIRECT the buffered fallback of the log is used.

use crate::wal::file::{io_err, FaultPlan, IoMode};
use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::format::BLOCK_SIZE;

enum Inner {
    Direct(DmaFile),
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
            IoMode::Direct => Inner::Direct(o.dma_open(path).await.map_err(io_err)?),
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
                let mut b = f.alloc_dma_buffer(data.len());
                b.as_bytes_mut().copy_from_slice(data);
                f.write_at(b, self.pos).await.map_err(io_err)?
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
            Inner::Direct(f) => {
                f.fdatasync().await.map_err(io_err)?;
                f.close().await.map_err(io_err)?;
            }
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
            Inner::Direct(f) => drop(f.close().await),
            Inner::Buffered(f) => drop(f.close().await),
        }
        let _ = std::fs::remove_file(&path);
    }
}
