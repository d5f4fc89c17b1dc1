//! The channel mesh between shards: one bounded glommio shared channel per ordered pair.
//!
//! # Connecting, and the startup hang it caused
//! A shared channel's end connects on its executor: `connect()` publishes this executor's id
//! in the channel, then waits until the other end has done the same. glommio 0.9 does not wake
//! the waiting task when the peer connects; it re-polls every pending connect once per reactor
//! turn instead. An executor with nothing else to do goes to sleep in io_uring, and then its
//! pending connects are never polled again. With 16 shards on 2 CPUs, about one start in ten
//! hung that way: every other shard had connected (so all peers were there), and one slept
//! forever with its connects unfinished. (glommio's `MeshBuilder`, used before, has the same
//! problem, plus an `Rc` shared between threads.)
//!
//! So [`MeshEnds::connect`] keeps its executor awake while it waits: a ticker task sleeps 1 ms
//! at a time, and each timer expiry is a reactor turn that re-polls the connects.
//!
//! # Construction
//! Nothing is negotiated at run time. The main thread creates all N × (N − 1) channel pairs
//! before any executor starts and hands each executor its ends ([`MeshEnds`], which are
//! `Send`). Each executor then connects all its ends at once.

use super::Msg;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// How often an executor waiting for its mesh connections wakes to re-poll them.
const CONNECT_TICK: Duration = Duration::from_millis(1);
use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};

/// One shard's unconnected ends of the mesh: a sender to and a receiver from every other
/// shard (`None` at its own index).
pub struct MeshEnds {
    senders: Vec<Option<SharedSender<Msg>>>,
    receivers: Vec<Option<SharedReceiver<Msg>>>,
}

/// Creates the ends of a full mesh of `n` shards, channels of `capacity` messages each.
/// Element `i` belongs to shard `i`.
pub fn full(n: usize, capacity: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..n)
        .map(|_| MeshEnds { senders: (0..n).map(|_| None).collect(), receivers: (0..n).map(|_| None).collect() })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(capacity);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends
}

impl MeshEnds {
    /// Connects every end on the calling executor, all at once, and returns them once every
    /// peer has connected its side.
    pub async fn connect(self) -> (Senders, Vec<(usize, ConnectedReceiver<Msg>)>) {
        let connected_all = Rc::new(Cell::new(false));
        let ticker = glommio::spawn_local({
            let connected_all = connected_all.clone();
            async move {
                while !connected_all.get() {
                    glommio::timer::sleep(CONNECT_TICK).await;
                }
            }
        });
        let ends = self.connect_all().await;
        connected_all.set(true);
        ticker.await;
        ends
    }

    async fn connect_all(self) -> (Senders, Vec<(usize, ConnectedReceiver<Msg>)>) {
        let senders: Vec<_> =
            self.senders.into_iter().map(|s| s.map(|s| glommio::spawn_local(s.connect()).detach())).collect();
        let receivers: Vec<_> = self
            .receivers
            .into_iter()
            .enumerate()
            .filter_map(|(peer, r)| r.map(|r| (peer, glommio::spawn_local(r.connect()).detach())))
            .collect();
        let mut connected = Vec::with_capacity(senders.len());
        for s in senders {
            connected.push(match s {
                Some(task) => task.await,
                None => None,
            });
        }
        let mut rx = Vec::with_capacity(receivers.len());
        for (peer, task) in receivers {
            if let Some(r) = task.await {
                rx.push((peer, r));
            }
        }
        (Senders { ends: connected }, rx)
    }
}

/// A shard's connected senders, indexed by destination shard.
pub struct Senders {
    ends: Vec<Option<ConnectedSender<Msg>>>,
}

impl Senders {
    /// Sends `msg` to shard `to`, waiting while the channel is full.
    pub async fn send_to(&self, to: usize, msg: Msg) -> glommio::Result<(), Msg> {
        match self.ends.get(to) {
            Some(Some(s)) => s.send(msg).await,
            _ => Err(no_channel(to)),
        }
    }

    /// Sends `msg` to shard `to` if the channel has room (`WouldBlock` with the message if not).
    pub fn try_send_to(&self, to: usize, msg: Msg) -> glommio::Result<(), Msg> {
        match self.ends.get(to) {
            Some(Some(s)) => s.try_send(msg),
            _ => Err(no_channel(to)),
        }
    }
}

fn no_channel(to: usize) -> glommio::GlommioError<Msg> {
    glommio::GlommioError::IoError(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("no mesh channel to shard {to}"),
    ))
}
