//! Time as the engine's safety rules read it: wall time (compared with other machines and
//! with the store's clock) and time since boot (a monotonic clock that keeps counting while
//! the machine is suspended or the process is stopped, for "how long since my last
//! heartbeat"). Injectable, so that tests can stall a writer for two hours in a millisecond.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use arca_format::Timestamp;

/// How far the clocks of writers, maintainers and the store may disagree (FORMAT.md
/// section 2). Sessions check it against the store when they start.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A source of time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Wall-clock time.
    fn now(&self) -> Timestamp;
    /// Time since boot, suspend included (`CLOCK_BOOTTIME`): never goes back, never stops.
    fn since_boot(&self) -> Duration;
}

/// The machine's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn since_boot(&self) -> Duration {
        // CLOCK_MONOTONIC stops while the machine sleeps; a laptop suspended for two hours
        // must see two hours pass.
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(Duration::from)
            .unwrap_or_else(|_| {
                nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                    .map(Duration::from)
                    .unwrap_or_default()
            })
    }
}

/// A clock that moves only when told: the system's time at creation plus what was added.
/// For tests: [`ManualClock::advance`] is a suspend or a stall, [`ManualClock::skew`] a
/// wall clock set wrong.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<ManualState>,
}

#[derive(Debug)]
struct ManualState {
    start_wall_nanos: i128,
    start_boot: Duration,
    elapsed: Duration,
    skew_secs: i64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// Starts at the system's current time.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(ManualState {
                start_wall_nanos: Timestamp::now().as_nanos(),
                start_boot: SystemClock.since_boot(),
                elapsed: Duration::ZERO,
                skew_secs: 0,
            }),
        }
    }

    /// Let time pass (both clocks).
    pub fn advance(&self, d: Duration) {
        self.state.lock().expect("lock").elapsed += d;
    }

    /// Set the wall clock this many seconds ahead (negative: behind) of true time.
    pub fn skew(&self, secs: i64) {
        self.state.lock().expect("lock").skew_secs = secs;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        let s = self.state.lock().expect("lock");
        let n =
            s.start_wall_nanos + s.elapsed.as_nanos() as i128 + s.skew_secs as i128 * 1_000_000_000;
        Timestamp::new(
            n.div_euclid(1_000_000_000) as i64,
            n.rem_euclid(1_000_000_000) as u32,
        )
    }

    fn since_boot(&self) -> Duration {
        let s = self.state.lock().expect("lock");
        s.start_boot + s.elapsed
    }
}
