//! A shard's snapshot files: `<dir>/<group>-<index>-<term>.arrow`, each an Arrow IPC
//! file of image chunks (see `image`). A file is written under a temporary name,
//! synced, renamed and its directory synced, so a crash leaves either the whole file
//! or none. The log records which snapshot a group stands on; the store keeps that
//! one and anything newer, and deletes older files only once the log has moved on.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use bytes::Bytes;

use super::image::{chunk_batch, chunk_offsets, Assembler, Manifest, SnapshotError};
use crate::log::GroupId;
use crate::raft::{Index, SnapshotMeta, Term};

const SUFFIX: &str = ".arrow";
const TEMP_SUFFIX: &str = ".arrow.tmp";

pub struct SnapshotStore {
    dir: PathBuf,
    /// Per group, the files on disk by index.
    files: BTreeMap<GroupId, BTreeMap<Index, Term>>,
}

impl SnapshotStore {
    /// Opens (creating) `dir`, removing unfinished temporary files.
    pub fn open(dir: &Path) -> Result<SnapshotStore, SnapshotError> {
        std::fs::create_dir_all(dir)?;
        let mut files: BTreeMap<GroupId, BTreeMap<Index, Term>> = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TEMP_SUFFIX) {
                std::fs::remove_file(dir.join(name))?;
            } else if let Some((group, index, term)) = parse_name(name) {
                files.entry(group).or_default().insert(index, term);
            }
        }
        Ok(SnapshotStore { dir: dir.to_path_buf(), files })
    }

    fn path(&self, group: GroupId, index: Index, term: Term) -> PathBuf {
        self.dir.join(format!("{group:06}-{index:020}-{term}{SUFFIX}"))
    }

    /// The newest snapshot file of a group: (index, term).
    pub fn latest(&self, group: GroupId) -> Option<(Index, Term)> {
        self.files.get(&group)?.last_key_value().map(|(&i, &t)| (i, t))
    }

    /// Writes a group's image durably.
    pub fn save(&mut self, group: GroupId, meta: &SnapshotMeta, image: &[u8]) -> Result<(), SnapshotError> {
        self.file_writer(group, meta).write(image)?;
        self.saved(group, meta);
        Ok(())
    }

    /// What writing a group's image takes, to be done on another thread; then
    /// [`saved`](Self::saved) records the file.
    pub fn file_writer(&self, group: GroupId, meta: &SnapshotMeta) -> FileWriteJob {
        FileWriteJob { dir: self.dir.clone(), path: self.path(group, meta.index, meta.term), group, meta: meta.clone() }
    }

    /// Records a file written by a [`FileWriteJob`].
    pub fn saved(&mut self, group: GroupId, meta: &SnapshotMeta) {
        self.files.entry(group).or_default().insert(meta.index, meta.term);
    }

    /// Reads and checks the group's snapshot at `index`.
    pub fn load(&self, group: GroupId, index: Index) -> Result<(Manifest, Bytes), SnapshotError> {
        let term = self
            .files
            .get(&group)
            .and_then(|files| files.get(&index))
            .ok_or_else(|| SnapshotError::Corrupt(format!("no snapshot file of group {group} at index {index}")))?;
        let path = self.path(group, index, *term);
        let (manifest, image) = read_file(&path)?;
        if manifest.group != group || manifest.meta.index != index || manifest.meta.term != *term {
            return Err(SnapshotError::Corrupt(format!("{} describes another snapshot", path.display())));
        }
        Ok((manifest, image))
    }

    /// Deletes the group's files older than `index` (the one the log now stands on).
    pub fn release_before(&mut self, group: GroupId, index: Index) -> Result<(), SnapshotError> {
        let Some(files) = self.files.get_mut(&group) else { return Ok(()) };
        let older: Vec<(Index, Term)> = files.range(..index).map(|(&i, &t)| (i, t)).collect();
        for (i, t) in older {
            std::fs::remove_file(self.dir.join(format!("{group:06}-{i:020}-{t}{SUFFIX}")))?;
            files.remove(&i);
        }
        Ok(())
    }

    /// Total bytes of the snapshot files on disk.
    pub fn disk_bytes(&self) -> u64 {
        let sizes = self.files.iter().flat_map(|(&g, files)| files.iter().map(move |(&i, &t)| (g, i, t)));
        sizes.filter_map(|(g, i, t)| std::fs::metadata(self.path(g, i, t)).ok()).map(|m| m.len()).sum()
    }
}

/// Writing one snapshot file: under a temporary name, synced, renamed, directory synced.
pub struct FileWriteJob {
    dir: PathBuf,
    path: PathBuf,
    pub group: GroupId,
    pub meta: SnapshotMeta,
}

impl FileWriteJob {
    /// Writes the file; the manifest it holds.
    pub fn write(&self, image: &[u8]) -> Result<Manifest, SnapshotError> {
        let temp = self.path.with_extension(TEMP_SUFFIX.trim_start_matches('.'));
        let manifest = Manifest::of(self.group, self.meta.clone(), image);
        write_file(&temp, &manifest, image)?;
        std::fs::rename(&temp, &self.path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(manifest)
    }
}

fn parse_name(name: &str) -> Option<(GroupId, Index, Term)> {
    let mut parts = name.strip_suffix(SUFFIX)?.split('-');
    let parsed = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    parts.next().is_none().then_some(parsed)
}

/// Writes an image as an Arrow IPC file and syncs it.
pub fn write_file(path: &Path, manifest: &Manifest, image: &[u8]) -> Result<(), SnapshotError> {
    let schema = manifest.schema();
    let mut writer = FileWriter::try_new(BufWriter::new(File::create(path)?), &schema)?;
    for offset in chunk_offsets(image.len()) {
        writer.write(&chunk_batch(&schema, image, offset))?;
    }
    writer.finish()?;
    let file = writer.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// Reads an image file, checking every chunk and the whole.
pub fn read_file(path: &Path) -> Result<(Manifest, Bytes), SnapshotError> {
    let reader = FileReader::try_new(File::open(path)?, None)?;
    let mut assembler = Assembler::new(Manifest::from_schema(&reader.schema())?);
    for batch in reader {
        assembler.push(&batch?)?;
    }
    assembler.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::ConfState;

    fn meta(index: Index, term: Term) -> SnapshotMeta {
        SnapshotMeta { index, term, conf_state: ConfState { voters: [1, 2, 3].into(), ..Default::default() } }
    }

    #[test]
    fn saved_snapshots_survive_reopening_and_old_ones_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::open(dir.path()).unwrap();
        let image = vec![7u8; 3 * super::super::image::CHUNK_BYTES / 2];
        store.save(4, &meta(10, 2), &image).unwrap();
        store.save(4, &meta(20, 3), b"newer").unwrap();
        std::fs::write(dir.path().join("000004-00000000000000000030-3.arrow.tmp"), b"half").unwrap();
        let mut store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.latest(4), Some((20, 3)));
        let (manifest, loaded) = store.load(4, 10).unwrap();
        assert_eq!((manifest.meta, loaded.len()), (meta(10, 2), image.len()));
        store.release_before(4, 20).unwrap();
        assert!(store.load(4, 10).is_err());
        assert_eq!(store.load(4, 20).unwrap().1, Bytes::from_static(b"newer"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file removed");
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::open(dir.path()).unwrap();
        store.save(1, &meta(5, 1), &vec![3u8; 4096]).unwrap();
        let path = dir.path().join("000001-00000000000000000005-1.arrow");
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a byte inside the chunk data (past the schema header).
        let at = bytes.windows(16).position(|w| w == [3u8; 16]).unwrap() + 100;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = store.load(1, 5).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(store.load(1, 5).is_err(), "truncated file refused");
    }
}
