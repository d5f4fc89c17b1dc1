//! When to send: the closed-loop and open-loop pacers.
//!
//! Times are nanoseconds since the run's start instant (`t0`), so this module is pure arithmetic
//! and can be driven by a simulated clock in tests.
//!
//! **Closed loop** keeps `depth` requests outstanding per connection; a request's latency is
//! measured from the moment it is actually handed to the socket. When the server stalls, the
//! client stops sending, so the stall shows up in only the few requests that were in flight: the
//! "coordinated omission" that makes closed-loop tails look better than users would see.
//!
//! **Open loop** gives each connection its own arrival process (Poisson or evenly spaced) at
//! `rate / connections`. Each request has an *intended* send time fixed by that process,
//! independent of how the server is doing. If the request cannot go out on time (the
//! connection already has `depth` requests outstanding, or the client thread was late), it waits
//! in the client, and its latency is still measured from the intended time. So a stall is
//! charged to every request that *should* have been sent during it: coordinated omission is
//! corrected by construction, not by back-filling the histogram afterwards.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::str::FromStr;

/// `--arrival poisson|uniform`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Exponentially distributed gaps: independent arrivals, as from many users.
    Poisson,
    /// Evenly spaced arrivals (connections are phase-shifted so the total is even too).
    Uniform,
}

impl FromStr for Arrival {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "poisson" => Ok(Arrival::Poisson),
            "uniform" => Ok(Arrival::Uniform),
            _ => Err(format!("arrival {s:?}: expected poisson or uniform")),
        }
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arrival::Poisson => "poisson",
            Arrival::Uniform => "uniform",
        })
    }
}

/// The open-loop arrival process of one connection.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    arrival: Arrival,
    mean_gap_ns: f64,
    next_ns: f64,
    rng: SmallRng,
}

impl OpenLoop {
    /// `rate_per_s` for this connection; `phase` in `[0, 1)` shifts the first arrival by that
    /// fraction of a gap so that evenly spaced connections do not fire in lockstep.
    pub fn new(rate_per_s: f64, arrival: Arrival, seed: u64, phase: f64) -> OpenLoop {
        assert!(rate_per_s > 0.0);
        let mean_gap_ns = 1e9 / rate_per_s;
        let mut rng = SmallRng::seed_from_u64(seed);
        let first = match arrival {
            Arrival::Uniform => phase * mean_gap_ns,
            Arrival::Poisson => exp_gap(&mut rng, mean_gap_ns),
        };
        OpenLoop { arrival, mean_gap_ns, next_ns: first, rng }
    }

    /// Intended time of the next request.
    pub fn peek_ns(&self) -> u64 {
        self.next_ns as u64
    }

    /// Consume the next intended time and draw the one after it.
    pub fn take_ns(&mut self) -> u64 {
        let t = self.next_ns as u64;
        self.next_ns += match self.arrival {
            Arrival::Uniform => self.mean_gap_ns,
            Arrival::Poisson => exp_gap(&mut self.rng, self.mean_gap_ns),
        };
        t
    }
}

fn exp_gap(rng: &mut SmallRng, mean_ns: f64) -> f64 {
    // 1 - u is in (0, 1], so ln never sees 0.
    let u: f64 = rng.gen();
    -(1.0 - u).ln() * mean_ns
}

/// Decides, for one connection, whether a request may go out now and what its latency clock
/// starts from.
#[derive(Debug, Clone)]
pub enum Pacer {
    Closed,
    Open(OpenLoop),
}

impl Pacer {
    /// If a request may be sent at `now_ns` with `inflight` outstanding out of `depth`, return
    /// the time its latency is measured from: `now_ns` in closed loop, the intended time in open
    /// loop (which may be in the past when the client is behind).
    pub fn next_request(&mut self, now_ns: u64, inflight: usize, depth: usize) -> Option<u64> {
        if inflight >= depth {
            return None;
        }
        match self {
            Pacer::Closed => Some(now_ns),
            Pacer::Open(o) if o.peek_ns() <= now_ns => Some(o.take_ns()),
            Pacer::Open(_) => None,
        }
    }

    /// The time the next request would be stamped with if one were taken now (open loop: its
    /// intended time; closed loop: `now_ns`). Used to stop at the end of a phase.
    pub fn peek_ns(&self, now_ns: u64) -> u64 {
        match self {
            Pacer::Closed => now_ns,
            Pacer::Open(o) => o.peek_ns(),
        }
    }

    /// When the event loop must wake up for this pacer even without I/O: open loop with room
    /// in the pipeline waits for the next intended time; otherwise only replies matter.
    pub fn wake_at_ns(&self, inflight: usize, depth: usize) -> Option<u64> {
        match self {
            Pacer::Open(o) if inflight < depth => Some(o.peek_ns()),
            _ => None,
        }
    }

    /// Skip (and count) the intended requests in `[from_ns, until_ns)` that were never sent:
    /// the backlog left when the measurement ends while the client is behind schedule.
    pub fn drain_unsent(&mut self, from_ns: u64, until_ns: u64) -> u64 {
        let mut n = 0;
        if let Pacer::Open(o) = self {
            while o.peek_ns() < until_ns {
                if o.take_ns() >= from_ns {
                    n += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A single-server FIFO model: each request takes `service_ns`; no request is served in
    /// `[stall_from, stall_until)`. Drives `pacer` with a simulated clock and returns
    /// (latency from the pacer's stamp, latency from actual send) per request.
    fn simulate(mut pacer: Pacer, depth: usize, service_ns: u64, stall: (u64, u64), end_ns: u64) -> Vec<(u64, u64)> {
        let mut now = 0u64;
        let mut server_free = 0u64;
        let mut inflight: VecDeque<(u64, u64, u64)> = VecDeque::new();
        let mut out = Vec::new();
        while now < end_ns || !inflight.is_empty() {
            if now < end_ns {
                while let Some(stamp) = pacer.next_request(now, inflight.len(), depth) {
                    let mut start = now.max(server_free);
                    if (stall.0..stall.1).contains(&start) {
                        start = stall.1;
                    }
                    let done = start + service_ns;
                    server_free = done;
                    inflight.push_back((stamp, now, done));
                }
            }
            // Next event: a completion or the pacer's next intended time.
            let next_done = inflight.front().map(|r| r.2).unwrap_or(u64::MAX);
            let next_wake =
                if now < end_ns { pacer.wake_at_ns(inflight.len(), depth).unwrap_or(u64::MAX) } else { u64::MAX };
            now = now.max(next_done.min(next_wake));
            while let Some(&(stamp, sent, done)) = inflight.front() {
                if done > now {
                    break;
                }
                inflight.pop_front();
                out.push((done - stamp, done - sent));
            }
        }
        out
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn open_loop_charges_a_stall_to_every_request_intended_during_it() {
        // 1000 req/s evenly spaced, 100 µs service, a 50 ms stall at 500 ms, 1 s run.
        let pacer = Pacer::Open(OpenLoop::new(1000.0, Arrival::Uniform, 1, 0.0));
        let lat = simulate(pacer, 1, 100_000, (500 * MS, 550 * MS), 1000 * MS);
        assert_eq!(lat.len(), 1000, "every intended request is sent and completes");

        let open_slow = lat.iter().filter(|l| l.0 > MS).count();
        let sent_slow = lat.iter().filter(|l| l.1 > MS).count();
        let open_max = lat.iter().map(|l| l.0).max().unwrap();
        // ~50 requests were intended during the stall; each waits out the rest of it.
        assert!((45..=60).contains(&open_slow), "open-loop slow count {open_slow}");
        assert!((49 * MS..=51 * MS).contains(&open_max), "max {open_max}");
        // Timing from the actual send hides it: only the one request in flight saw the stall.
        assert_eq!(sent_slow, 1, "send-time latency sees the stall once");
        // The latencies of the queued requests decrease roughly linearly, 1 ms apart.
        let mut slow: Vec<u64> = lat.iter().map(|l| l.0).filter(|&l| l > MS).collect();
        slow.sort_unstable();
        let median = slow[slow.len() / 2];
        assert!(median > 20 * MS && median < 30 * MS, "median of stalled {median}");
    }

    #[test]
    fn closed_loop_measures_from_send() {
        // Closed loop, depth 1: the stall is seen by exactly one request.
        let lat = simulate(Pacer::Closed, 1, 100_000, (500 * MS, 550 * MS), 1000 * MS);
        let slow = lat.iter().filter(|l| l.0 > MS).count();
        assert_eq!(slow, 1);
        assert!(lat.iter().all(|l| l.0 == l.1));
    }

    #[test]
    fn open_loop_over_capacity_latency_grows_and_backlog_is_counted() {
        // 2000 req/s offered to a server that does 1000/s: latencies grow without bound.
        let mut pacer = Pacer::Open(OpenLoop::new(2000.0, Arrival::Uniform, 1, 0.0));
        let end = 1000 * MS;
        // Run the simulation only for what gets sent, then count the unsent backlog.
        let mut now = 0u64;
        let mut server_free = 0u64;
        let mut sent = 0u64;
        let mut last_lat = 0;
        while now < end {
            if let Some(stamp) = pacer.next_request(now, 0, 1) {
                let done = now.max(server_free) + MS;
                server_free = done;
                last_lat = done - stamp;
                sent += 1;
                now = done; // depth 1: wait for the reply
            } else {
                now = pacer.wake_at_ns(0, 1).unwrap();
            }
        }
        let unsent = pacer.drain_unsent(0, end);
        assert_eq!(sent + unsent, 2000, "intended = sent + unsent");
        assert!((990..=1001).contains(&sent), "sent {sent}");
        assert!(last_lat > 400 * MS, "latency grew to {last_lat}");
    }

    #[test]
    fn poisson_rate_is_right_and_seeded() {
        let mut a = OpenLoop::new(10_000.0, Arrival::Poisson, 42, 0.0);
        let mut b = OpenLoop::new(10_000.0, Arrival::Poisson, 42, 0.0);
        let mut n = 0;
        while a.peek_ns() < 10_000 * MS {
            assert_eq!(a.take_ns(), b.take_ns());
            n += 1;
        }
        // 100k expected; Poisson sd ~316.
        assert!((98_500..101_500).contains(&n), "{n}");
        // Gaps have an exponential shape: about e^-1 of them exceed the mean.
        let mut c = OpenLoop::new(1000.0, Arrival::Poisson, 7, 0.0);
        let mut prev = c.take_ns();
        let mut long = 0;
        for _ in 0..100_000 {
            let t = c.take_ns();
            if t - prev > MS {
                long += 1;
            }
            prev = t;
        }
        let frac = long as f64 / 100_000.0;
        assert!((frac - (-1f64).exp()).abs() < 0.01, "{frac}");
    }

    #[test]
    fn uniform_phase_shifts_first_arrival() {
        let o = OpenLoop::new(1000.0, Arrival::Uniform, 0, 0.5);
        assert_eq!(o.peek_ns(), MS / 2);
        let mut p = Pacer::Open(o);
        assert_eq!(p.next_request(MS / 2 - 1, 0, 4), None, "not yet due");
        assert_eq!(p.next_request(MS / 2, 4, 4), None, "pipeline full");
        assert_eq!(p.next_request(10 * MS, 0, 4), Some(MS / 2), "late: keeps intended time");
        assert_eq!(p.next_request(10 * MS, 1, 4), Some(MS + MS / 2));
    }
}
