//! The archiver's ordering, through the library alone: an archive store in the test records
//! every `put` together with the archiver's position in the consumer registry at that moment,
//! and can fail the put of one object. The archive is created before any segment goes in;
//! segments go oldest first; the position moves past a segment only after its object is stored,
//! so a failed put leaves the position on the segment before and the next pass resumes there;
//! and a segment that would leave a hole in the archive is refused before anything is written.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use walship::archive::archiver::ARCHIVER_ID;
use walship::archive::{
    object_name, ArchiveStore, Archiver, ArchiverOptions, Compression, LocalDirStore, ObjectInfo,
    PutOutcome, IDENTITY_NAME,
};
use walship::consumers::ConsumerRegistry;
use walship::format::{SegmentFileKind, SegmentName};
use walship::{DataDir, Error, Result};

use common::sealed_store;

/// A directory archive that records each `put` as (object name, the archiver's registered
/// position when the put began), and fails the put of `fail` if set.
struct Recording {
    inner: LocalDirStore,
    data: DataDir,
    puts: Mutex<Vec<(String, u64)>>,
    fail: Mutex<Option<String>>,
}

impl Recording {
    fn new(root: &Path, data: &Path) -> Recording {
        Recording {
            inner: LocalDirStore::create(root).unwrap(),
            data: DataDir::new(data),
            puts: Mutex::new(Vec::new()),
            fail: Mutex::new(None),
        }
    }

    fn take_puts(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.puts.lock().unwrap())
    }
}

impl ArchiveStore for Recording {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(&self, name: &str, data: Arc<Vec<u8>>) -> Result<PutOutcome> {
        let position = registered_position(&self.data);
        self.puts.lock().unwrap().push((name.to_string(), position));
        if self.fail.lock().unwrap().as_deref() == Some(name) {
            return Err(Error::Other(format!("{name}: put failed on purpose")));
        }
        self.inner.put(name, data).await
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(name).await
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>> {
        self.inner.list().await
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name).await
    }

    async fn sync(&self, name: &str) -> Result<()> {
        self.inner.sync(name).await
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        self.inner.delete(name).await
    }

    async fn replace(&self, name: &str, data: Arc<Vec<u8>>) -> Result<()> {
        self.inner.replace(name, data).await
    }
}

/// The archiver's position in the consumer registry; 0 before it registered.
fn registered_position(data: &DataDir) -> u64 {
    ConsumerRegistry::new(data)
        .get(ARCHIVER_ID)
        .unwrap()
        .map_or(0, |r| r.position.0)
}

/// A data directory with `n` sealed segments and no writer; returns the seal LSN of each.
fn store(root: &Path, n: usize) -> Vec<u64> {
    let (wal, _, ends) = sealed_store(root, n);
    drop(wal);
    ends
}

fn object(no: u64) -> String {
    object_name(
        SegmentName::new(1, no, SegmentFileKind::Sealed),
        Compression::None,
    )
}

fn sealed_path(data: &Path, no: u64) -> std::path::PathBuf {
    data.join("wal")
        .join(SegmentName::new(1, no, SegmentFileKind::Sealed).to_string())
}

async fn archiver(data: &Path, store: &Arc<Recording>) -> Archiver<Recording> {
    Archiver::new(
        DataDir::new(data),
        store.clone(),
        ArchiverOptions::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_go_oldest_first_and_the_position_moves_only_after_each_put() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let ends = store(&data, 4);
    let rec = Arc::new(Recording::new(&t.path().join("arc"), &data));
    let mut a = archiver(&data, &rec).await;
    let sum = a.push_pending().await.unwrap();

    let want: Vec<(String, u64)> = std::iter::once((IDENTITY_NAME.to_string(), 0))
        .chain((0..4).map(|i| (object(i), if i == 0 { 0 } else { ends[i as usize - 1] })))
        .collect();
    assert_eq!(rec.take_puts(), want);
    assert_eq!((sum.archived, sum.already_archived), (4, 0));
    assert_eq!(sum.position, walship::Lsn(ends[3]));
    assert_eq!(a.position().0, ends[3]);
    assert_eq!(registered_position(&DataDir::new(&data)), ends[3]);

    // Nothing is pending any more: a second pass, even by a new archiver, writes nothing.
    let mut b = archiver(&data, &rec).await;
    let sum = b.push_pending().await.unwrap();
    assert_eq!((sum.archived, sum.already_archived), (0, 0));
    assert_eq!(sum.position, walship::Lsn(ends[3]));
    assert!(rec.take_puts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_put_keeps_the_position_before_it_and_the_next_pass_resumes_there() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let ends = store(&data, 4);
    let rec = Arc::new(Recording::new(&t.path().join("arc"), &data));
    *rec.fail.lock().unwrap() = Some(object(2));
    let mut a = archiver(&data, &rec).await;
    let err = a.push_pending().await.unwrap_err();
    assert!(err.to_string().contains("put failed on purpose"), "{err}");
    let names: Vec<String> = rec.take_puts().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec![IDENTITY_NAME.to_string(), object(0), object(1), object(2)]
    );
    assert_eq!(a.position().0, ends[1]);
    assert_eq!(registered_position(&DataDir::new(&data)), ends[1]);

    *rec.fail.lock().unwrap() = None;
    let mut b = archiver(&data, &rec).await;
    let sum = b.push_pending().await.unwrap();
    assert_eq!(
        rec.take_puts(),
        vec![(object(2), ends[1]), (object(3), ends[2])]
    );
    assert_eq!((sum.archived, sum.position), (2, walship::Lsn(ends[3])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_would_leave_a_hole_is_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let ends = store(&data, 4);
    let rec = Arc::new(Recording::new(&t.path().join("arc"), &data));
    *rec.fail.lock().unwrap() = Some(object(2));
    let mut a = archiver(&data, &rec).await;
    a.push_pending().await.unwrap_err();
    rec.take_puts();

    // Segment 2 goes from wal/ before it was archived: segment 3 would follow a hole.
    std::fs::remove_file(sealed_path(&data, 2)).unwrap();
    *rec.fail.lock().unwrap() = None;
    let mut b = archiver(&data, &rec).await;
    let err = b.push_pending().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("were removed from the data directory before they were archived"),
        "{err}"
    );
    assert!(rec.take_puts().is_empty());
    assert!(!t.path().join("arc").join(object(3)).exists());
    assert_eq!(registered_position(&DataDir::new(&data)), ends[1]);
}
