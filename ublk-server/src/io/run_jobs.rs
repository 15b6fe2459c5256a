//! The first queue's side of targets' jobs: a posted job (a message, a
//! hook) or a background job a target spawned, run against one table with
//! a job's I/O context (no request buffer).

use crate::backend::ring::Ring;
use crate::backend::Backend;
use crate::io::handler::Handler;
use crate::services::jobs::{errno_text, BackgroundJob, Hook, JobKind};

impl<B: Backend> Handler<B> {
    /// Runs one job on `ring` against this table.
    pub(crate) async fn run_job<R: Ring>(
        &self,
        ring: &R,
        kind: &JobKind,
    ) -> Result<String, String> {
        let ctx = self.target_io(ring, None, None);
        match kind {
            JobKind::Message { sector, argv } => {
                // dm_table_find_target, as dm-ioctl's target_message.
                let seg = (self.table.segment_at(*sector))
                    .ok_or("Target message sector outside device.")?;
                self.table.segments()[seg].target.message(argv, &ctx).await
            }
            JobKind::Hook(hook) => {
                for s in self.table.segments().iter().filter(|s| s.target.serves()) {
                    let t = &s.target;
                    let r = match hook {
                        Hook::Presuspend => t.presuspend(&ctx).await,
                        Hook::Postsuspend => t.postsuspend(&ctx).await,
                        Hook::Resume => t.resume(&ctx).await,
                        Hook::Stop => t.stop(&ctx).await,
                    };
                    r.map_err(|e| {
                        format!(
                            "{} (line {}): {hook:?}: {}",
                            t.name(),
                            s.line,
                            errno_text(e)
                        )
                    })?;
                }
                Ok(String::new())
            }
        }
    }
}

impl<B: Backend> Handler<B> {
    /// Runs a background job a target spawned, until it returns; its I/O
    /// fails once `current` says the table it was started on is no longer
    /// the ring's (the target's stop hook should have ended it).
    pub(crate) async fn run_background<R: Ring>(
        &self,
        ring: &R,
        job: BackgroundJob,
        current: &dyn Fn() -> bool,
    ) {
        let ctx = self.target_io(ring, None, Some(current));
        if let Err(e) = job(&ctx).await {
            tracing::warn!("a background job ended: {}", errno_text(e));
        }
    }
}
