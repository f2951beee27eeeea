//! Converting the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
//!
//! `bpf_ktime_get_ns()` is CLOCK_MONOTONIC; bitcoind stamps its capture
//! records with the wall clock, read as it writes each one. The offset
//! between the two is sampled by bracketing the realtime read between two
//! monotonic reads and keeping the tightest of a few tries, which bounds the
//! error to well under a microsecond on an idle machine. A trace samples it
//! anew each time it reads the ring buffer (see `trace`), because the wall
//! clock can step while the monotonic one does not: NTP setting the time, or
//! a virtual machine's agent setting it after the machine was paused.

/// Offset from CLOCK_MONOTONIC to CLOCK_REALTIME.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl WallClock {
    /// Samples the offset now (some 15 vDSO clock reads, well under a
    /// microsecond).
    pub fn sample() -> Self {
        let mut best = (i128::MAX, 0);
        for _ in 0..5 {
            let before = now_ns(libc::CLOCK_MONOTONIC);
            let wall = now_ns(libc::CLOCK_REALTIME);
            let after = now_ns(libc::CLOCK_MONOTONIC);
            let width = after - before;
            if width < best.0 {
                best = (width, wall - (before + width / 2));
            }
        }
        Self { offset_ns: best.1 }
    }

    /// The clock of timestamps that are UNIX time already: a capture's
    /// records, replayed through the statistics.
    pub fn unix() -> Self {
        Self { offset_ns: 0 }
    }

    /// Microseconds since the UNIX epoch for a CLOCK_MONOTONIC timestamp.
    pub fn unix_micros(&self, ktime_ns: u64) -> u64 {
        ((i128::from(ktime_ns) + self.offset_ns) / 1000) as u64
    }

    /// The current CLOCK_MONOTONIC time in nanoseconds.
    pub fn monotonic_now_ns() -> u64 {
        now_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_now() {
        let clock = WallClock::sample();
        let mono = WallClock::monotonic_now_ns();
        let wall_us = (now_ns(libc::CLOCK_REALTIME) / 1000) as u64;
        let converted = clock.unix_micros(mono);
        assert!(
            converted.abs_diff(wall_us) < 1000,
            "{converted} vs {wall_us}"
        );
    }
}
