//! Reloading the static file when it changes.
//!
//! The file is re-read every `interval` (polling works on every filesystem,
//! with editors that replace the file and with ConfigMap symlink swaps). A
//! changed file that parses is published; one that does not is logged once
//! and refused, and the last good configuration stays in force.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{sync::watch as channel, task::JoinHandle};
use tracing::{info, warn};

use super::{load, parse, ConfigError, Loaded};
use crate::error::Chain;

/// Reload outcomes, for metrics and the admin server.
#[derive(Debug, Default)]
pub struct ReloadStats {
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ReloadStats {
    /// Changed files that were applied.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Changed files that were refused (unreadable or invalid).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Why the last refused file was refused; `None` once a good file is
    /// applied again.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e;
        }
    }
}

/// A watched file: the current configuration and the reload counters.
#[derive(Debug)]
pub struct Watched {
    /// The last good configuration; `changed()` fires on each applied reload.
    pub rx: channel::Receiver<Arc<Loaded>>,
    pub stats: Arc<ReloadStats>,
    /// The polling task; it ends when every receiver is dropped.
    pub task: JoinHandle<()>,
}

impl Watched {
    pub fn current(&self) -> Arc<Loaded> {
        self.rx.borrow().clone()
    }
}

/// Loads `path` (an error here is fatal to the caller) and keeps re-reading
/// it every `interval`. Must be called within a Tokio runtime.
pub fn watch(path: &Path, interval: Duration) -> Result<Watched, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })?;
    let initial = match std::str::from_utf8(&text) {
        Ok(s) => parse(s, &path.display().to_string())?,
        // Let load() produce the error.
        Err(_) => load(path)?,
    };
    let (tx, rx) = channel::channel(Arc::new(initial));
    let stats = Arc::new(ReloadStats::default());
    let task = tokio::spawn(poll(path.to_owned(), interval, text, tx, stats.clone()));
    Ok(Watched { rx, stats, task })
}

async fn poll(
    path: PathBuf,
    interval: Duration,
    mut seen: Vec<u8>,
    tx: channel::Sender<Arc<Loaded>>,
    stats: Arc<ReloadStats>,
) {
    let file = path.display().to_string();
    let mut read_error: Option<String> = None;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let text = match tokio::fs::read(&path).await {
            Ok(t) => t,
            Err(e) => {
                let e = Chain(&ConfigError::Read {
                    file: file.clone(),
                    source: e,
                })
                .to_string();
                // A missing file is reported once, not every interval.
                if read_error.as_ref() != Some(&e) {
                    warn!(file = %file, error = %e, "config reload refused; the last good config stays in force");
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    stats.set_last_error(Some(e.clone()));
                    read_error = Some(e);
                    // Whatever appears next is new.
                    seen.clear();
                }
                continue;
            }
        };
        read_error = None;
        if text == seen {
            continue;
        }
        let result = match std::str::from_utf8(&text) {
            Ok(s) => parse(s, &file),
            Err(e) => Err(ConfigError::Invalid(super::Invalid {
                file: file.clone(),
                path: String::new(),
                message: format!("not UTF-8: {e}"),
                line: None,
                column: None,
            })),
        };
        seen = text;
        match result {
            Ok(mut loaded) => {
                loaded.generation = tx.borrow().generation + 1;
                if loaded.node != tx.borrow().node {
                    warn!(file = %file, "listen, admin, attach_cgroup or fast_path changed: they apply at the next start");
                }
                info!(
                    file = %file,
                    generation = loaded.generation,
                    services = loaded.model.services.len(),
                    "config reloaded"
                );
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.set_last_error(None);
                tx.send_replace(Arc::new(loaded));
            }
            Err(e) => {
                let e = Chain(&e).to_string();
                warn!(file = %file, error = %e, "config reload refused; the last good config stays in force");
                stats.failed.fetch_add(1, Ordering::Relaxed);
                stats.set_last_error(Some(e));
            }
        }
    }
}
