//! How many tasks each caller runs at once, up to `tasks.max_concurrent_per_token`. Every task
//! runs in `nx-run_task.slice`, whose `TasksMax` (`systemd.tasks_slice_tasks_max`) all tasks
//! share: without a cap per caller, one token's tasks at their own limit could take every slot
//! of it, and every other caller's task would fail to start (attacker s10).

use super::TaskError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Tasks running now, per caller, and the most one caller may run at once.
pub struct CallerCaps {
    cap: usize,
    running: Mutex<HashMap<String, usize>>,
}

/// One running task of a caller, counted until it is dropped (when the task has ended).
pub struct CallerSlot {
    caps: Arc<CallerCaps>,
    caller: String,
}

impl CallerCaps {
    /// Caps of `cap` tasks at once per caller.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more running task of `caller` (how the API names it: `token <id>` or `the
    /// root token`). Errors: [`TaskError::CallerAtCap`] when it runs `cap` tasks already.
    pub fn admit(self: &Arc<Self>, caller: &str) -> Result<CallerSlot, TaskError> {
        let mut running = self.running.lock().expect("caller caps");
        let count = running.entry(caller.to_owned()).or_insert(0);
        if *count >= self.cap {
            return Err(TaskError::CallerAtCap {
                caller: caller.to_owned(),
                cap: self.cap,
            });
        }
        *count += 1;
        Ok(CallerSlot {
            caps: Arc::clone(self),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut running = self.caps.running.lock().expect("caller caps");
        if let Some(count) = running.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_at_its_cap_is_refused_until_one_of_its_tasks_ends() {
        let caps = CallerCaps::new(2);
        let (a1, _a2) = (
            caps.admit("token a").unwrap(),
            caps.admit("token a").unwrap(),
        );
        let refused = caps
            .admit("token a")
            .err()
            .expect("a third task of token a");
        assert!(refused.to_string().contains("runs 2 tasks"), "{refused}");
        let _b = caps.admit("token b").expect("another caller");
        drop(a1);
        let _a3 = caps.admit("token a").expect("a slot came back");
        assert_eq!(caps.running.lock().unwrap().len(), 2);
    }
}
