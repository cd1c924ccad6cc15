//! Pause points: named places where a test can hold an operation while something else
//! happens (a maintenance run, a clock jump, a second maintainer), then let it go on. This
//! is how races and stalls are tested deterministically rather than with sleeps. Nothing
//! is armed in production; an unarmed point costs one uncontended lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// A set of pause points, shared by every clone of a repository that carries it.
#[derive(Clone, Debug, Default)]
pub struct PausePoints(Arc<Mutex<HashMap<&'static str, Arc<Pause>>>>);

/// One armed point.
#[derive(Debug)]
pub struct Pause {
    reached: Semaphore,
    release: Semaphore,
}

impl PausePoints {
    /// Arm `name`: the next operation to reach it stops there until
    /// [`Pause::release`]. The point disarms itself when reached.
    pub fn arm(&self, name: &'static str) -> Arc<Pause> {
        let p = Arc::new(Pause {
            reached: Semaphore::new(0),
            release: Semaphore::new(0),
        });
        self.0.lock().expect("lock").insert(name, p.clone());
        p
    }

    /// For kill -9 and stall tests across processes: arm the point named by the
    /// environment variable `ARCA_TEST_ENGINE_PAUSE` (e.g. `writer:index-written`, a
    /// checkpoint stored), to hold the first operation that reaches it, saying `paused at
    /// <point>` on stderr then: for good, or with `ARCA_TEST_RESUME_WHEN=<file>` until that
    /// file exists. Unset, nothing. Needs a tokio runtime.
    pub fn arm_from_env(&self) {
        let Ok(point) = std::env::var("ARCA_TEST_ENGINE_PAUSE") else {
            return;
        };
        let resume = std::env::var_os("ARCA_TEST_RESUME_WHEN").map(std::path::PathBuf::from);
        // Test-only, once per repository opened: the name lives as long as the process.
        let point: &'static str = Box::leak(point.into_boxed_str());
        let p = self.arm(point);
        tokio::spawn(async move {
            p.reached().await;
            eprintln!("paused at {point}");
            if let Some(f) = resume {
                while !f.exists() {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                eprintln!("resumed at {point}");
                p.release();
            }
        });
    }

    /// Called by the engine at a point: waits there if a test armed it.
    pub(crate) async fn at(&self, name: &'static str) {
        let armed = self.0.lock().expect("lock").remove(name);
        if let Some(p) = armed {
            tracing::debug!("paused at {name}");
            p.reached.add_permits(1);
            let _ = p.release.acquire().await.map(|g| g.forget());
        }
    }
}

impl Pause {
    /// Wait until an operation has reached the point (and is held there).
    pub async fn reached(&self) {
        let _ = self.reached.acquire().await.map(|g| g.forget());
    }

    /// Let the held operation go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}
