//! A cluster backup: one image per group in one Arrow IPC file. Each batch is one
//! chunk of one group's image — the columns of a snapshot file (offset, data, crc32)
//! plus `group` — and the schema metadata lists every group's manifest. Reading it
//! checks every chunk and every image, as a snapshot file is checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{RecordBatch, UInt64Array};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;

use super::image::{chunk_batch, chunk_offsets, Assembler, Manifest, SnapshotError, IMAGE_MAX_BYTES};
use crate::log::GroupId;
use crate::raft::{ConfState, SnapshotMeta};

const FORMAT: &str = "quarry-backup-1";

fn corrupt(why: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(why.into())
}

/// Every group's image, by group.
#[derive(Debug, PartialEq, Eq)]
pub struct Backup {
    pub groups: BTreeMap<GroupId, (Manifest, Bytes)>,
}

fn manifest_json(m: &Manifest) -> serde_json::Value {
    let c = &m.meta.conf_state;
    serde_json::json!({
        "group": m.group, "index": m.meta.index, "term": m.meta.term, "size": m.size, "crc32": m.crc32,
        "voters": c.voters, "voters_outgoing": c.voters_outgoing, "learners": c.learners,
    })
}

#[derive(serde::Deserialize)]
struct ManifestRecord {
    group: GroupId,
    index: u64,
    term: u64,
    size: u64,
    crc32: u32,
    voters: BTreeSet<u64>,
    voters_outgoing: BTreeSet<u64>,
    learners: BTreeSet<u64>,
}

impl From<ManifestRecord> for Manifest {
    fn from(r: ManifestRecord) -> Manifest {
        let conf_state = ConfState { voters: r.voters, voters_outgoing: r.voters_outgoing, learners: r.learners };
        Manifest {
            group: r.group,
            meta: SnapshotMeta { index: r.index, term: r.term, conf_state },
            size: r.size,
            crc32: r.crc32,
        }
    }
}

fn fields() -> Vec<Field> {
    vec![
        Field::new("offset", DataType::UInt64, false),
        Field::new("data", DataType::Binary, false),
        Field::new("crc32", DataType::UInt32, false),
        Field::new("group", DataType::UInt64, false),
    ]
}

impl Backup {
    /// The groups are numbered 0..n, each present once.
    pub fn group_count(&self) -> u64 {
        self.groups.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.groups.values().map(|(m, _)| m.size).sum()
    }

    /// Writes the backup to `path` (through a temporary file, synced, then renamed).
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        let manifests: Vec<_> = self.groups.values().map(|(m, _)| manifest_json(m)).collect();
        let metadata = HashMap::from([
            ("quarry.format".to_string(), FORMAT.to_string()),
            ("quarry.manifests".to_string(), serde_json::Value::from(manifests).to_string()),
        ]);
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(fields(), metadata));
        let temp = path.with_extension("partial");
        let mut writer = FileWriter::try_new(BufWriter::new(File::create(&temp)?), &schema)?;
        for (&group, (manifest, image)) in &self.groups {
            let chunk_schema = manifest.schema();
            for offset in chunk_offsets(image.len()) {
                let chunk = chunk_batch(&chunk_schema, image, offset);
                let groups = Arc::new(UInt64Array::from(vec![group; chunk.num_rows()]));
                let mut columns = chunk.columns().to_vec();
                columns.push(groups);
                writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
            }
        }
        writer.finish()?;
        let file = writer.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads a backup, checking every chunk, every image and that groups 0..n are
    /// all there.
    pub fn read(path: &Path) -> Result<Backup, SnapshotError> {
        let reader = FileReader::try_new(File::open(path)?, None)?;
        let schema = reader.schema();
        if schema.fields() != &fields().into() {
            return Err(corrupt("not a Quarry backup (unexpected columns)"));
        }
        let get = |key: &str| schema.metadata().get(key).ok_or_else(|| corrupt(format!("backup lacks {key}")));
        if get("quarry.format")? != FORMAT {
            return Err(corrupt(format!("unknown backup format {:?}", get("quarry.format")?)));
        }
        let records: Vec<ManifestRecord> = serde_json::from_str(get("quarry.manifests")?)
            .map_err(|e| corrupt(format!("backup manifests unreadable: {e}")))?;
        let mut assemblers: BTreeMap<GroupId, Assembler> = BTreeMap::new();
        for record in records {
            if record.size > IMAGE_MAX_BYTES {
                return Err(corrupt(format!(
                    "group {}: image of {} bytes exceeds {IMAGE_MAX_BYTES}",
                    record.group, record.size
                )));
            }
            let manifest = Manifest::from(record);
            if assemblers.insert(manifest.group, Assembler::new(manifest)).is_some() {
                return Err(corrupt("a group appears twice"));
            }
        }
        let expected: Vec<GroupId> = (0..assemblers.len() as u64).collect();
        if assemblers.keys().copied().collect::<Vec<_>>() != expected {
            return Err(corrupt("groups are not numbered 0..n"));
        }
        for batch in reader {
            let batch = batch?;
            let groups =
                batch.column(3).as_any().downcast_ref::<UInt64Array>().ok_or_else(|| corrupt("bad group column"))?;
            if batch.num_rows() == 0 {
                continue;
            }
            let group = groups.value(0);
            if groups.iter().any(|g| g != Some(group)) {
                return Err(corrupt("a batch mixes groups"));
            }
            let assembler =
                assemblers.get_mut(&group).ok_or_else(|| corrupt(format!("chunk of unknown group {group}")))?;
            assembler.push(&batch)?;
        }
        let mut groups = BTreeMap::new();
        for (group, assembler) in assemblers {
            let (manifest, image) = assembler.finish().map_err(|e| corrupt(format!("group {group}: {e}")))?;
            groups.insert(group, (manifest, image));
        }
        Ok(Backup { groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> Backup {
        let mut groups = BTreeMap::new();
        for group in 0..3u64 {
            let image = Bytes::from(vec![group as u8 + 1; (group as usize + 1) * super::super::image::CHUNK_BYTES / 2]);
            let meta = SnapshotMeta { index: 10 + group, term: 2, conf_state: ConfState::new([1, 2, 3]) };
            groups.insert(group, (Manifest::of(group, meta, &image), image));
        }
        Backup { groups }
    }

    #[test]
    fn a_backup_reads_back_whole_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.backup");
        let original = backup();
        original.write(&path).unwrap();
        assert_eq!(Backup::read(&path).unwrap(), original);

        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(64).position(|w| w.iter().all(|&b| b == 2)).unwrap() + 10;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = Backup::read(&path).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(Backup::read(&path).is_err(), "a truncated backup is refused");
    }
}
