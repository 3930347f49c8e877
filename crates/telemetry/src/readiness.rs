//! Whether a service can do its work right now, and if not, why.

use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug)]
struct State {
    ready: bool,
    reason: String,
}

/// A shared readiness flag. Clones share the same state.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<Mutex<State>>);

impl Readiness {
    /// Starts not ready, for `reason` (`"connecting"`).
    pub fn new(reason: impl Into<String>) -> Readiness {
        Readiness(Arc::new(Mutex::new(State { ready: false, reason: reason.into() })))
    }

    pub fn set_ready(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.ready = true;
        state.reason.clear();
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.ready = false;
        state.reason = reason.into();
    }

    /// `Ok(())` when ready, otherwise the reason.
    pub fn status(&self) -> Result<(), String> {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.ready {
            Ok(())
        } else {
            Err(state.reason.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_state() {
        let readiness = Readiness::new("connecting");
        let clone = readiness.clone();
        assert_eq!(readiness.status(), Err("connecting".into()));
        clone.set_ready();
        assert_eq!(readiness.status(), Ok(()));
        clone.set_not_ready("broker lost");
        assert_eq!(readiness.status(), Err("broker lost".into()));
    }
}
