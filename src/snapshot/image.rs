//! A snapshot image as Arrow record batches: the state machine's bytes cut into
//! checksummed chunks, one chunk per record batch, and a manifest (group, index, term,
//! membership, size, checksum) in the schema's metadata. The same batches make the
//! file on disk (Arrow IPC) and, later, the Flight stream between nodes, so a receiver
//! checks each chunk as it arrives and can resume after the last good one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::{Array, BinaryArray, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::{Bytes, BytesMut};

use crate::log::GroupId;
use crate::raft::{ConfState, SnapshotMeta};

/// Bytes of image per chunk (one record batch).
pub const CHUNK_BYTES: usize = 1 << 20;
/// The largest image accepted from a file or a peer.
pub const IMAGE_MAX_BYTES: u64 = 1 << 34;
const FORMAT: &str = "quarry-snapshot-v1";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot is not valid Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
}

fn corrupt(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(what.into())
}

/// What a snapshot is of, written beside its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub group: GroupId,
    pub meta: SnapshotMeta,
    /// Length of the whole image.
    pub size: u64,
    /// CRC32 of the whole image.
    pub crc32: u32,
}

impl Manifest {
    pub fn of(group: GroupId, meta: SnapshotMeta, image: &[u8]) -> Manifest {
        Manifest { group, meta, size: image.len() as u64, crc32: crc32fast::hash(image) }
    }

    /// The Arrow schema of the chunk batches, carrying this manifest as metadata.
    pub fn schema(&self) -> SchemaRef {
        let ids = |s: &BTreeSet<u64>| s.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let conf = &self.meta.conf_state;
        let metadata = HashMap::from([
            ("quarry.format".to_string(), FORMAT.to_string()),
            ("quarry.group".to_string(), self.group.to_string()),
            ("quarry.index".to_string(), self.meta.index.to_string()),
            ("quarry.term".to_string(), self.meta.term.to_string()),
            ("quarry.voters".to_string(), ids(&conf.voters)),
            ("quarry.voters_outgoing".to_string(), ids(&conf.voters_outgoing)),
            ("quarry.learners".to_string(), ids(&conf.learners)),
            ("quarry.size".to_string(), self.size.to_string()),
            ("quarry.crc32".to_string(), self.crc32.to_string()),
        ]);
        Arc::new(Schema::new_with_metadata(chunk_fields(), metadata))
    }

    /// Reads a manifest back from a schema, refusing anything that is not one.
    pub fn from_schema(schema: &Schema) -> Result<Manifest, SnapshotError> {
        if schema.fields() != &chunk_fields().into() {
            return Err(corrupt("unexpected columns"));
        }
        let metadata = schema.metadata();
        let get = |key: &str| metadata.get(key).ok_or_else(|| corrupt(format!("manifest lacks {key}")));
        if get("quarry.format")? != FORMAT {
            return Err(corrupt(format!("unknown format {:?}", get("quarry.format")?)));
        }
        let number = |key: &str| -> Result<u64, SnapshotError> {
            get(key)?.parse().map_err(|_| corrupt(format!("manifest {key} is not a number")))
        };
        let ids = |key: &str| -> Result<BTreeSet<u64>, SnapshotError> {
            let list = get(key)?;
            if list.is_empty() {
                return Ok(BTreeSet::new());
            }
            list.split(',').map(|id| id.parse().map_err(|_| corrupt(format!("manifest {key} is not a list")))).collect()
        };
        let conf_state = ConfState {
            voters: ids("quarry.voters")?,
            voters_outgoing: ids("quarry.voters_outgoing")?,
            learners: ids("quarry.learners")?,
        };
        let size = number("quarry.size")?;
        if size > IMAGE_MAX_BYTES {
            return Err(corrupt(format!("image of {size} bytes exceeds {IMAGE_MAX_BYTES}")));
        }
        let crc32 = u32::try_from(number("quarry.crc32")?).map_err(|_| corrupt("manifest crc32 out of range"))?;
        Ok(Manifest {
            group: number("quarry.group")?,
            meta: SnapshotMeta { index: number("quarry.index")?, term: number("quarry.term")?, conf_state },
            size,
            crc32,
        })
    }
}

fn chunk_fields() -> Vec<Field> {
    vec![
        Field::new("offset", DataType::UInt64, false),
        Field::new("data", DataType::Binary, false),
        Field::new("crc32", DataType::UInt32, false),
    ]
}

/// The record batch holding the chunk of `image` that starts at `offset`.
pub fn chunk_batch(schema: &SchemaRef, image: &[u8], offset: usize) -> RecordBatch {
    let data = &image[offset..image.len().min(offset + CHUNK_BYTES)];
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt64Array::from(vec![offset as u64])),
            Arc::new(BinaryArray::from_vec(vec![data])),
            Arc::new(UInt32Array::from(vec![crc32fast::hash(data)])),
        ],
    )
    .expect("the columns match the schema")
}

/// Chunk start offsets of an image (an empty image still has one, empty, chunk).
pub fn chunk_offsets(size: usize) -> impl Iterator<Item = usize> {
    (0..size.max(1)).step_by(CHUNK_BYTES)
}

/// Reassembles an image from its chunks, checking each one and then the whole.
pub struct Assembler {
    manifest: Manifest,
    image: BytesMut,
}

impl Assembler {
    pub fn new(manifest: Manifest) -> Assembler {
        Assembler { manifest, image: BytesMut::new() }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes received and checked so far: where a resumed transfer starts.
    pub fn received(&self) -> u64 {
        self.image.len() as u64
    }

    /// Adds the chunk(s) of one record batch. A bad chunk is refused and leaves the
    /// assembler as it was, so the transfer can fetch it again.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), SnapshotError> {
        let column = |i: usize| batch.column(i).as_any();
        let (Some(offsets), Some(data), Some(crcs)) = (
            column(0).downcast_ref::<UInt64Array>(),
            column(1).downcast_ref::<BinaryArray>(),
            column(2).downcast_ref::<UInt32Array>(),
        ) else {
            return Err(corrupt("chunk columns of the wrong types"));
        };
        if offsets.null_count() + data.null_count() + crcs.null_count() > 0 {
            return Err(corrupt("null in a chunk"));
        }
        let mut expected = self.image.len() as u64;
        for row in 0..batch.num_rows() {
            let chunk = data.value(row);
            if offsets.value(row) != expected {
                return Err(corrupt(format!("chunk at offset {} where {expected} was due", offsets.value(row))));
            }
            if crc32fast::hash(chunk) != crcs.value(row) {
                return Err(corrupt(format!("chunk at offset {expected} fails its checksum")));
            }
            expected += chunk.len() as u64;
            if expected > self.manifest.size {
                return Err(corrupt("chunks run past the image size"));
            }
        }
        for row in 0..batch.num_rows() {
            self.image.extend_from_slice(data.value(row));
        }
        Ok(())
    }

    /// The whole image, once complete and matching the manifest's checksum.
    pub fn finish(self) -> Result<(Manifest, Bytes), SnapshotError> {
        if self.image.len() as u64 != self.manifest.size {
            return Err(corrupt(format!("image ends at {} of {} bytes", self.image.len(), self.manifest.size)));
        }
        if crc32fast::hash(&self.image) != self.manifest.crc32 {
            return Err(corrupt("image fails its checksum"));
        }
        Ok((self.manifest, self.image.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(image: &[u8]) -> Manifest {
        let conf_state = ConfState { voters: [1, 2, 3].into(), voters_outgoing: [].into(), learners: [4].into() };
        Manifest::of(7, SnapshotMeta { index: 42, term: 3, conf_state }, image)
    }

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn chunks_reassemble_to_the_image_and_the_manifest_round_trips() {
        for len in [0, 1, CHUNK_BYTES, 2 * CHUNK_BYTES + 17] {
            let image = image(len);
            let manifest = manifest(&image);
            let schema = manifest.schema();
            assert_eq!(Manifest::from_schema(&schema).unwrap(), manifest);
            let mut assembler = Assembler::new(manifest.clone());
            for offset in chunk_offsets(len) {
                assembler.push(&chunk_batch(&schema, &image, offset)).unwrap();
            }
            assert_eq!(assembler.finish().unwrap(), (manifest, Bytes::from(image)));
        }
    }

    #[test]
    fn a_bad_chunk_is_refused_and_can_be_fetched_again() {
        let image = image(CHUNK_BYTES + 5);
        let manifest = manifest(&image);
        let schema = manifest.schema();
        let mut assembler = Assembler::new(manifest);
        assembler.push(&chunk_batch(&schema, &image, 0)).unwrap();
        // The second chunk damaged in flight: its bytes no longer match its checksum.
        let good = chunk_batch(&schema, &image, CHUNK_BYTES);
        let mut bytes = image[CHUNK_BYTES..].to_vec();
        bytes[1] ^= 1;
        let mut columns = good.columns().to_vec();
        columns[1] = Arc::new(BinaryArray::from_vec(vec![&bytes[..]]));
        let damaged = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let err = assembler.push(&damaged).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        // A chunk out of order is refused too; the good one is still accepted.
        assert!(assembler.push(&chunk_batch(&schema, &image, 0)).is_err());
        assert_eq!(assembler.received(), CHUNK_BYTES as u64);
        assembler.push(&chunk_batch(&schema, &image, CHUNK_BYTES)).unwrap();
        assert!(assembler.finish().is_ok());
    }

    #[test]
    fn a_short_image_or_wrong_checksum_never_finishes() {
        let image = image(100);
        let mut manifest = manifest(&image);
        let schema = manifest.schema();
        let assembler = Assembler::new(manifest.clone());
        assert!(assembler.finish().is_err(), "nothing received");
        manifest.crc32 ^= 1;
        let mut assembler = Assembler::new(manifest);
        assembler.push(&chunk_batch(&schema, &image, 0)).unwrap();
        assert!(assembler.finish().unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn a_foreign_schema_is_not_a_manifest() {
        let plain = Schema::new(chunk_fields());
        assert!(Manifest::from_schema(&plain).is_err());
        let mut metadata = manifest(b"x").schema().metadata().clone();
        metadata.insert("quarry.index".to_string(), "many".to_string());
        assert!(Manifest::from_schema(&Schema::new_with_metadata(chunk_fields(), metadata)).is_err());
    }
}
