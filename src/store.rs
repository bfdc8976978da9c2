//! The node's durable state: the epoch record, written with fsync before the
//! node acts in that epoch.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tandem_sync::message::EpochRecord;

pub struct EpochStore {
    path: PathBuf,
    /// The record on disk now, to fall back to when a save fails.
    saved: std::sync::Mutex<EpochRecord>,
}

impl EpochStore {
    pub fn open(data_dir: &Path) -> Result<EpochStore> {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        Ok(EpochStore {
            path: data_dir.join("epoch.json"),
            saved: std::sync::Mutex::new(EpochRecord::default()),
        })
    }

    /// The record on disk, or the empty record of a pair that never had a
    /// primary. A corrupt file is an error, never a silent reset: forgetting
    /// an epoch could let this node act in one it already left.
    pub fn load(&self) -> Result<EpochRecord> {
        let record = self.read()?;
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = record.clone();
        Ok(record)
    }

    pub fn last_saved(&self) -> EpochRecord {
        self.saved.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn read(&self) -> Result<EpochRecord> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; restore it or move it away if this node's history is to be forgotten",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EpochRecord::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Write to a temporary file, fsync it, rename it over the record and
    /// fsync the directory, so a crash leaves the old record or the new one.
    pub fn save(&self, record: &EpochRecord) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(record)?)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = record.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sync::message::Epoch;

    #[test]
    fn saves_loads_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = EpochStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), EpochRecord::default());
        let rec = EpochRecord {
            epoch: Epoch(4),
            holder: Some("a".into()),
        };
        store.save(&rec).unwrap();
        assert_eq!(store.load().unwrap(), rec);
        fs::write(dir.path().join("epoch.json"), b"{not json").unwrap();
        let err = format!("{:#}", store.load().unwrap_err());
        assert!(err.contains("is corrupt"), "{err}");
    }
}
