//! Per-user request rate limit: `requests` per `window`, as a generic cell rate algorithm
//! (GCRA), so a user may burst up to the whole allowance and then one request per
//! `window / requests`. One number per user; users idle for a window are forgotten.

use std::collections::HashMap;

#[derive(Debug)]
pub struct RateLimit {
    /// Milliseconds one request "costs".
    interval_ms: u64,
    window_ms: u64,
    /// user → theoretical arrival time (ms).
    tat: HashMap<String, u64>,
}

impl RateLimit {
    pub fn new(requests: u32, window_s: u64) -> RateLimit {
        let window_ms = window_s.max(1) * 1000;
        RateLimit {
            interval_ms: (window_ms / u64::from(requests.max(1))).max(1),
            window_ms,
            tat: HashMap::new(),
        }
    }

    /// Count one request. `Err(seconds)` = over the limit; retry after that many seconds.
    pub fn check(&mut self, user: &str, now_ms: u64) -> Result<(), u64> {
        // One look-up for a known user, two for a new one (every request of a stream of
        // strangers is a new one).
        let (interval_ms, window_ms) = (self.interval_ms, self.window_ms);
        let next_after = |tat: u64| {
            let next = tat.max(now_ms) + interval_ms;
            match next - now_ms > window_ms {
                true => Err((next - now_ms - window_ms).div_ceil(1000).max(1)),
                false => Ok(next),
            }
        };
        match self.tat.get_mut(user) {
            Some(t) => *t = next_after(*t)?,
            None => {
                let next = next_after(now_ms)?;
                self.tat.insert(user.to_string(), next);
            }
        }
        Ok(())
    }

    /// Forget users whose allowance is whole again (keeps memory bounded).
    pub fn prune(&mut self, now_ms: u64) {
        self.tat.retain(|_, tat| *tat > now_ms);
    }

    pub fn tracked(&self) -> usize {
        self.tat.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_allowance_then_refuses_with_retry_after() {
        let mut rl = RateLimit::new(60, 60);
        for _ in 0..60 {
            assert_eq!(rl.check("a", 1000), Ok(()));
        }
        assert_eq!(rl.check("a", 1000), Err(1));
        // Another user is unaffected.
        assert_eq!(rl.check("b", 1000), Ok(()));
        // One second later one more request fits.
        assert_eq!(rl.check("a", 2000), Ok(()));
        assert!(rl.check("a", 2000).is_err());
    }

    #[test]
    fn retry_after_reflects_the_window() {
        let mut rl = RateLimit::new(2, 10);
        assert!(rl.check("a", 0).is_ok() && rl.check("a", 0).is_ok());
        assert_eq!(rl.check("a", 0), Err(5));
        rl.prune(20_000);
        assert_eq!(rl.tracked(), 0);
    }
}
