//! The time the time-driven controllers (CronJob, Job TTL) decide on.
//!
//! Why a seam: a CronJob firing "every minute" must be testable without waiting a minute.
//! The controllers read [`Clock::now`] instead of the system time and re-check every
//! object when a test moves a [`Clock::manual`] clock forward ([`Clock::ticks`]), so a
//! test drives the schedule; in a running cluster the clock is the system's and never
//! ticks (the controllers requeue themselves for the next scheduled time).

use jiff::{SignedDuration, Timestamp};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The system clock, or one a test moves.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

#[derive(Debug)]
struct Manual {
    now: Mutex<Timestamp>,
    ticks: watch::Sender<u64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock::default()
    }

    /// A clock standing at `at` until [`Clock::advance`] or [`Clock::set`] moves it.
    pub fn manual(at: Timestamp) -> Self {
        Clock {
            manual: Some(Arc::new(Manual {
                now: Mutex::new(at),
                ticks: watch::channel(0).0,
            })),
        }
    }

    /// A manual clock that follows the RFC 3339 time written in `path` (re-read every
    /// 50 ms; the system time until the file holds one), so a test can drive the
    /// controllers of a whole `wharf control` process (the hidden
    /// `--controller-clock-file` flag). The follower stops when the clock is dropped.
    /// Needs a Tokio runtime.
    pub fn following_file(path: std::path::PathBuf) -> Self {
        let clock = Clock::manual(Timestamp::now());
        let weak = clock.manual.as_ref().map(Arc::downgrade);
        tokio::spawn(async move {
            let mut last = String::new();
            while let Some(manual) = weak.as_ref().and_then(std::sync::Weak::upgrade) {
                let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
                let text = text.trim();
                if text != last {
                    if let Ok(at) = text.parse::<Timestamp>() {
                        *manual.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
                        manual.ticks.send_modify(|n| *n += 1);
                    }
                    last = text.to_string();
                }
                drop(manual);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        clock
    }

    /// Now, to the second (what `metav1.Time` keeps).
    pub fn now(&self) -> Timestamp {
        let now = match &self.manual {
            None => Timestamp::now(),
            Some(m) => *m.now.lock().unwrap_or_else(|e| e.into_inner()),
        };
        Timestamp::from_second(now.as_second()).unwrap_or(now)
    }

    /// Moves a manual clock forward by `by` (a system clock ignores it).
    pub fn advance(&self, by: SignedDuration) {
        if let Some(m) = &self.manual {
            let mut now = m.now.lock().unwrap_or_else(|e| e.into_inner());
            *now = now.checked_add(by).unwrap_or(*now);
            drop(now);
            m.ticks.send_modify(|n| *n += 1);
        }
    }

    /// Sets a manual clock (a system clock ignores it).
    pub fn set(&self, at: Timestamp) {
        if let Some(m) = &self.manual {
            *m.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
            m.ticks.send_modify(|n| *n += 1);
        }
    }

    /// A stream that yields whenever a manual clock moves; a system clock's never
    /// yields. For `Controller::reconcile_all_on`.
    pub fn ticks(&self) -> futures::stream::BoxStream<'static, ()> {
        use futures::StreamExt;
        match &self.manual {
            None => futures::stream::pending().boxed(),
            Some(m) => {
                let mut rx = m.ticks.subscribe();
                rx.mark_unchanged();
                futures::stream::unfold(rx, |mut rx| async move {
                    rx.changed().await.ok()?;
                    Some(((), rx))
                })
                .boxed()
            }
        }
    }
}
