//! A simulated disk under the log writer, for power-loss and I/O-fault tests.
//!
//! `kill -9` keeps everything that reached the kernel: it cannot show that the log syncs what
//! it claims to. [`SimDisk`] can. The real [`ShardLog`](super::ShardLog) writes through it
//! (built with [`ShardLog::on_sim_disk`](super::ShardLog::on_sim_disk)) instead of the kernel,
//! and the disk records every operation in order. It keeps what was *written* apart from what
//! was *made durable*:
//! - a write changes the file's contents but not its durable contents;
//! - `fdatasync` of a file makes its contents (and size) durable;
//! - creating or removing a name changes the directory, which is durable only after the
//!   directory is fsynced.
//!
//! [`SimDisk::crash_image`] then gives the files a power loss right after the first `n`
//! operations leaves: the durable contents of every durably named file, plus, if the last
//! operation was a write not yet synced, the first `torn_sectors` 512-byte sectors of it (a
//! torn write); every other unsynced byte is gone, and so is every file created (or renamed)
//! after its directory's last fsync. Tests sweep `n` over every operation of a run.
//!
//! The writer's `O_DIRECT | O_DSYNC` write is modelled as a write followed by an `fdatasync`
//! (the device may have stored any prefix of sectors when power fails mid-write), and
//! preallocation as a size change followed by an `fdatasync`, as on the real path.
//!
//! The disk can also fail the k-th operation (counting from 1), once or from then on, with
//! EIO: a failed operation has no effect.
//!
//! Nothing in production builds a `SimDisk`; the only cost there is one `Option` check per
//! segment creation.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Sector size of the simulated device: the unit a torn write keeps.
pub const SECTOR_BYTES: usize = 512;

/// One operation, as the disk saw it.
#[derive(Debug, Clone)]
pub enum SimOp {
    /// A new empty file (a new inode) under `path`.
    Create { path: PathBuf },
    /// `path` removed from its directory.
    Remove { path: PathBuf },
    /// Bytes written at `pos`: in the file, not yet durable.
    Write { path: PathBuf, pos: u64, data: Vec<u8> },
    /// The file's size set (preallocation): not yet durable.
    SetLen { path: PathBuf, len: u64 },
    /// fdatasync: the file's contents and size are durable.
    SyncData { path: PathBuf },
    /// fsync of a directory: its names are durable.
    SyncDir { dir: PathBuf },
}

impl SimOp {
    /// Whether this operation makes something durable.
    pub fn is_sync(&self) -> bool {
        matches!(self, SimOp::SyncData { .. } | SimOp::SyncDir { .. })
    }
}

/// Which operations fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Operation k (from 1) fails with EIO; later ones succeed.
    Once(u64),
    /// Operation k and every later one fail with EIO.
    From(u64),
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct SimDisk {
    ops: RefCell<Vec<SimOp>>,
    /// Operations attempted (failed ones included), for [`SimFault`].
    attempts: Cell<u64>,
    fault: Cell<Option<SimFault>>,
    failed: Cell<u64>,
}

/// A file on the simulated disk, as the writer holds it.
#[derive(Debug, Clone)]
pub struct SimFile {
    path: PathBuf,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

/// The file system state after some operations: names and inodes, written and durable.
#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    /// Names as the running system sees them.
    names: BTreeMap<PathBuf, usize>,
    /// Names a power loss keeps.
    durable_names: BTreeMap<PathBuf, usize>,
}

impl State {
    fn apply(&mut self, op: &SimOp) {
        match op {
            SimOp::Create { path } => {
                self.inodes.push(Inode::default());
                self.names.insert(path.clone(), self.inodes.len() - 1);
            }
            SimOp::Remove { path } => {
                self.names.remove(path);
            }
            SimOp::Write { path, pos, data } => {
                if let Some(f) = self.names.get(path).map(|&i| &mut self.inodes[i]) {
                    write_at(&mut f.data, *pos, data);
                }
            }
            SimOp::SetLen { path, len } => {
                if let Some(f) = self.names.get(path).map(|&i| &mut self.inodes[i]) {
                    f.data.resize(*len as usize, 0);
                }
            }
            SimOp::SyncData { path } => {
                if let Some(f) = self.names.get(path).map(|&i| &mut self.inodes[i]) {
                    f.durable = f.data.clone();
                }
            }
            SimOp::SyncDir { dir } => {
                self.durable_names.retain(|p, _| p.parent() != Some(dir.as_path()));
                for (p, &i) in &self.names {
                    if p.parent() == Some(dir.as_path()) {
                        self.durable_names.insert(p.clone(), i);
                    }
                }
            }
        }
    }
}

fn write_at(buf: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let pos = pos as usize;
    if buf.len() < pos + data.len() {
        buf.resize(pos + data.len(), 0);
    }
    buf[pos..pos + data.len()].copy_from_slice(data);
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A disk whose operations fail as `fault` says.
    pub fn failing(fault: SimFault) -> SimDisk {
        let d = SimDisk::default();
        d.fault.set(Some(fault));
        d
    }

    /// Every operation that succeeded, in order.
    pub fn ops(&self) -> Vec<SimOp> {
        self.ops.borrow().clone()
    }

    /// Number of operations that succeeded so far.
    pub fn op_count(&self) -> usize {
        self.ops.borrow().len()
    }

    /// Operations attempted, failed ones included.
    pub fn attempts(&self) -> u64 {
        self.attempts.get()
    }

    /// Operations failed by the fault plan.
    pub fn failures(&self) -> u64 {
        self.failed.get()
    }

    fn record(&self, op: SimOp) -> io::Result<()> {
        let n = self.attempts.get() + 1;
        self.attempts.set(n);
        let fail = match self.fault.get() {
            Some(SimFault::Once(k)) => n == k,
            Some(SimFault::From(k)) => n >= k,
            None => false,
        };
        if fail {
            self.failed.set(self.failed.get() + 1);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.ops.borrow_mut().push(op);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let mut st = State::default();
        for op in self.ops.borrow().iter() {
            st.apply(op);
        }
        st.names.contains_key(path)
    }

    /// Creates `path`, which must not exist.
    pub fn create(&self, path: &Path) -> io::Result<SimFile> {
        if self.exists(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        self.record(SimOp::Create { path: path.to_path_buf() })?;
        Ok(SimFile { path: path.to_path_buf() })
    }

    /// Removes `path` from its directory (durable after the directory's fsync).
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        if !self.exists(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        self.record(SimOp::Remove { path: path.to_path_buf() })
    }

    /// fsync of directory `dir`.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.record(SimOp::SyncDir { dir: dir.to_path_buf() })
    }

    /// The writer's durable write: write, then fdatasync (two operations).
    pub fn write_durable(&self, f: &SimFile, data: &[u8], pos: u64) -> io::Result<()> {
        self.record(SimOp::Write { path: f.path.clone(), pos, data: data.to_vec() })?;
        self.record(SimOp::SyncData { path: f.path.clone() })
    }

    /// Preallocation: size, then fdatasync (two operations).
    pub fn preallocate(&self, f: &SimFile, len: u64) -> io::Result<()> {
        self.record(SimOp::SetLen { path: f.path.clone(), len })?;
        self.record(SimOp::SyncData { path: f.path.clone() })
    }

    /// The files as the running system sees them after every operation so far (what a process
    /// crash leaves: everything that reached the kernel).
    pub fn current_image(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut st = State::default();
        for op in self.ops.borrow().iter() {
            st.apply(op);
        }
        st.names.iter().map(|(p, &i)| (p.clone(), st.inodes[i].data.clone())).collect()
    }

    /// What a power loss right after the first `n` operations leaves (module docs). When
    /// operation `n - 1` is a write that is not yet synced, its first `torn_sectors` sectors
    /// are kept (0: none of it).
    pub fn crash_image(&self, n: usize, torn_sectors: usize) -> BTreeMap<PathBuf, Vec<u8>> {
        let ops = self.ops.borrow();
        let n = n.min(ops.len());
        let mut st = State::default();
        for op in &ops[..n] {
            st.apply(op);
        }
        let mut out: BTreeMap<PathBuf, Vec<u8>> =
            st.durable_names.iter().map(|(p, &i)| (p.clone(), st.inodes[i].durable.clone())).collect();
        if let Some(SimOp::Write { path, pos, data }) = n.checked_sub(1).map(|i| &ops[i]) {
            let keep = (torn_sectors * SECTOR_BYTES).min(data.len());
            // The torn write lands in the file's inode only if that inode is durably named.
            let inode = st.names.get(path).copied();
            if keep > 0 && inode.is_some() && st.durable_names.get(path).copied() == inode {
                if let Some(bytes) = out.get_mut(path) {
                    write_at(bytes, *pos, &data[..keep]);
                }
            }
        }
        out
    }

    /// Sectors in operation `n - 1` if it is a write (the torn variants worth sweeping).
    pub fn write_sectors_before(&self, n: usize) -> Option<usize> {
        match n.checked_sub(1).and_then(|i| self.ops.borrow().get(i).cloned()) {
            Some(SimOp::Write { data, .. }) => Some(data.len().div_ceil(SECTOR_BYTES)),
            _ => None,
        }
    }
}

/// Writes `image` (from [`SimDisk::crash_image`]) under `root`, replacing the prefix `from`
/// of every path with `root`.
pub fn materialize(image: &BTreeMap<PathBuf, Vec<u8>>, from: &Path, root: &Path) -> io::Result<()> {
    for (p, bytes) in image {
        let rel = p.strip_prefix(from).map_err(|e| io::Error::other(format!("{}: {e}", p.display())))?;
        let to = root.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&to, bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_data_and_names_survive_a_crash() {
        let d = SimDisk::new();
        let dir = Path::new("/d");
        let a = d.create(&dir.join("a")).unwrap();
        d.write_durable(&a, &[1u8; 1024], 0).unwrap();
        // Not named durably yet: a crash forgets the file.
        assert!(d.crash_image(d.op_count(), 0).is_empty());
        d.sync_dir(dir).unwrap();
        let n = d.op_count();
        assert_eq!(d.crash_image(n, 0)[&dir.join("a")], vec![1u8; 1024]);
        d.record(SimOp::Write { path: dir.join("a"), pos: 1024, data: vec![2u8; 1024] }).unwrap();
        // Unsynced: dropped, or torn after one sector.
        assert_eq!(d.crash_image(n + 1, 0)[&dir.join("a")].len(), 1024);
        let torn = &d.crash_image(n + 1, 1)[&dir.join("a")];
        assert_eq!((torn.len(), torn[1024], torn[1535]), (1536, 2, 2));
        d.remove(&dir.join("a")).unwrap();
        // A removal is durable only with the directory's fsync.
        assert_eq!(d.crash_image(d.op_count(), 0).len(), 1);
        d.sync_dir(dir).unwrap();
        assert!(d.crash_image(d.op_count(), 0).is_empty());
    }

    #[test]
    fn faults_fail_the_kth_operation_once_or_from_then_on() {
        let d = SimDisk::failing(SimFault::Once(2));
        let f = d.create(Path::new("/d/x")).unwrap();
        assert!(d.write_durable(&f, b"x", 0).is_err());
        assert!(d.write_durable(&f, b"x", 0).is_ok());
        let d = SimDisk::failing(SimFault::From(2));
        let f = d.create(Path::new("/d/x")).unwrap();
        assert!(d.write_durable(&f, b"x", 0).is_err());
        assert!(d.sync_dir(Path::new("/d")).is_err());
        assert_eq!(d.failures(), 2);
    }
}
