//! A lake on a local directory lists a Delta log without gaps.
//!
//! ```text
//!   delta-rs / kernel ──list(_delta_log/)──▶ GaplessLogListing ──▶ LocalFileSystem
//!                                               │  commit versions 3110, 3112?
//!                                               └─ HEAD 3111.json: it exists (a
//!                                                  later commit proves it), add it
//! ```
//!
//! `object_store`'s `LocalFileSystem` lists a directory with an unsorted
//! `readdir` walk, read in chunks of 1,024 entries between which other tasks
//! run. POSIX leaves it unspecified whether an entry created during the walk
//! is returned; on ext4 the walk is in hash order, so of two commits created
//! while a long `_delta_log` is being listed the first can be missed and the
//! second seen. Delta's kernel then refuses the log ("Expected contiguous
//! commit files, but found gap: 3110 -> 3112"), a definite error. A 70-minute
//! soak (2026-12-04) stopped on exactly this: `optimize` committed a vacuum's
//! two log entries to a bronze table while the bronze writer listed its log.
//!
//! A gap is almost never real in the newest part of a log: a writer commits
//! version `n + 1` only after it has read version `n`, and log cleanup deletes
//! only the oldest entries. So every commit missing between the first and the
//! last that a `_delta_log/` listing shows is looked up by name (`HEAD`); the
//! ones that exist are added. Listing again would not do: while commits keep
//! coming, every listing of a long log misses some. A commit that really is
//! missing stays missing, for the kernel to report. Object stores (S3
//! and the like) list in lexical order with read-after-write consistency and
//! are not wrapped.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use url::Url;

/// At most this many missing commits are looked up per listing (a gap that
/// large is not a race).
const MAX_LOOKUPS: usize = 10_000;

/// A local-directory store whose listings of a `_delta_log/` directory show
/// every commit between the first and the last they show.
#[derive(Debug)]
pub(crate) struct GaplessLogListing {
    inner: Arc<dyn ObjectStore>,
}

impl GaplessLogListing {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Display for GaplessLogListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GaplessLogListing({})", self.inner)
    }
}

/// Whether `prefix` names a Delta log directory (or a path inside one).
fn is_log(prefix: Option<&Path>) -> bool {
    prefix.is_some_and(|p| p.parts().any(|part| part.as_ref() == "_delta_log"))
}

/// The version of a plain commit file (`00000000000000003110.json`).
fn commit_version(meta: &ObjectMeta) -> Option<u64> {
    let name = meta.location.filename()?;
    let digits = name.strip_suffix(".json")?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

impl GaplessLogListing {
    /// List with `list`, then look up each commit missing between the first
    /// and the last listed one (a `HEAD` of its file); those that exist join
    /// the listing, those that do not stay missing for the kernel to report.
    fn gapless<F>(
        &self,
        prefix: Option<&Path>,
        list: F,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>>
    where
        F: FnOnce(&Arc<dyn ObjectStore>) -> BoxStream<'static, object_store::Result<ObjectMeta>>
            + Send
            + 'static,
    {
        if !is_log(prefix) {
            return list(&self.inner);
        }
        let inner = Arc::clone(&self.inner);
        stream::once(async move {
            let mut listing: Vec<ObjectMeta> = list(&inner).try_collect().await?;
            let found = fill_gaps(&inner, &listing).await?;
            if !found.is_empty() {
                tracing::debug!(
                    found = found.len(),
                    first = %found[0].location,
                    "a listing of a Delta log missed commits created during it; added them"
                );
                listing.extend(found);
            }
            Ok::<_, object_store::Error>(stream::iter(listing.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }
}

/// The version of a checkpoint file (`00000000000000003110.checkpoint.parquet`,
/// multi-part and v2 checkpoints included).
fn checkpoint_version(meta: &ObjectMeta) -> Option<u64> {
    let name = meta.location.filename()?;
    let (digits, rest) = name.split_at_checked(20)?;
    (rest.starts_with(".checkpoint.") && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The commits missing between the first and last listed ones that exist.
/// Only commits from the newest listed checkpoint on are looked at: the
/// kernel reads nothing older, and log cleanup may leave old gaps.
async fn fill_gaps(
    store: &Arc<dyn ObjectStore>,
    listing: &[ObjectMeta],
) -> object_store::Result<Vec<ObjectMeta>> {
    let from = listing
        .iter()
        .filter_map(checkpoint_version)
        .max()
        .unwrap_or(0);
    let mut commits: Vec<(u64, &Path)> = listing
        .iter()
        .filter_map(|m| Some((commit_version(m)?, &m.location)))
        .filter(|(v, _)| *v >= from)
        .collect();
    commits.sort_unstable_by_key(|(v, _)| *v);
    let mut found = Vec::new();
    let mut looked = 0;
    for pair in commits.windows(2) {
        let ((before, path), (after, _)) = (pair[0], pair[1]);
        let dir: Path = path.parts().take(path.parts().count() - 1).collect();
        for v in before + 1..after {
            looked += 1;
            if looked > MAX_LOOKUPS {
                return Ok(found);
            }
            match store.head(&dir.clone().join(format!("{v:020}.json"))).await {
                Ok(meta) => found.push(meta),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(found)
}

#[async_trait]
impl ObjectStore for GaplessLogListing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let p = prefix.cloned();
        self.gapless(prefix, move |s| s.list(p.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (p, o) = (prefix.cloned(), offset.clone());
        self.gapless(prefix, move |s| s.list_with_offset(p.as_ref(), &o))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Builds `file://` stores for delta-rs: its default local store, wrapped.
#[derive(Debug, Default)]
pub(crate) struct LocalLakeFactory;

impl ObjectStoreFactory for LocalLakeFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> deltalake::DeltaResult<(ObjectStoreRef, Path)> {
        let (store, path) = object_store::parse_url_opts(url, &config.raw)?;
        let mut store: ObjectStoreRef = Arc::new(GaplessLogListing::new(Arc::from(store)));
        if let Some(runtime) = &config.runtime {
            store = Arc::new(deltalake::logstore::DeltaIOStorageBackend::new(
                store,
                runtime.clone(),
            ));
        }
        Ok((store, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The first gap among the listed commit versions, as (before, after).
    fn first_gap(listing: &[ObjectMeta]) -> Option<(u64, u64)> {
        let mut versions: Vec<u64> = listing.iter().filter_map(commit_version).collect();
        versions.sort_unstable();
        versions.dedup();
        versions
            .windows(2)
            .find(|w| w[0] + 1 != w[1])
            .map(|w| (w[0], w[1]))
    }

    /// A store whose listings miss one commit file, as a `readdir` racing a
    /// commit does; a lookup by name finds it.
    #[derive(Debug)]
    struct Racing {
        inner: InMemory,
        hidden: Path,
        lookups: AtomicUsize,
    }

    impl fmt::Display for Racing {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Racing")
        }
    }

    #[async_trait]
    impl ObjectStore for Racing {
        async fn put_opts(
            &self,
            l: &Path,
            p: PutPayload,
            o: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> object_store::Result<GetResult> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            self.inner.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(l)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            let hidden = self.hidden.clone();
            self.inner
                .list(prefix)
                .try_filter(move |m| futures::future::ready(m.location != hidden))
                .boxed()
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> object_store::Result<()> {
            self.inner.copy_opts(f, t, o).await
        }
    }

    /// Commits `versions` of table `t` except `absent`, a checkpoint and a
    /// data file; listings miss commit `hidden`.
    async fn log_of(
        versions: std::ops::RangeInclusive<u64>,
        hidden: u64,
        absent: &[u64],
    ) -> Arc<Racing> {
        let store = Racing {
            inner: InMemory::new(),
            hidden: Path::from(format!("t/_delta_log/{hidden:020}.json")),
            lookups: AtomicUsize::new(0),
        };
        for v in versions.filter(|v| !absent.contains(v)) {
            store
                .put(
                    &Path::from(format!("t/_delta_log/{v:020}.json")),
                    "{}".into(),
                )
                .await
                .unwrap();
        }
        store
            .put(
                &Path::from("t/_delta_log/00000000000000003106.checkpoint.parquet"),
                "x".into(),
            )
            .await
            .unwrap();
        store
            .put(&Path::from("t/part-0.parquet"), "x".into())
            .await
            .unwrap();
        Arc::new(store)
    }

    fn names(listing: &[ObjectMeta]) -> Vec<String> {
        let mut v: Vec<String> = listing.iter().map(|m| m.location.to_string()).collect();
        v.sort();
        v
    }

    async fn listed(
        store: &dyn ObjectStore,
        prefix: &str,
        offset: Option<&str>,
    ) -> Vec<ObjectMeta> {
        let prefix = Path::from(prefix);
        match offset {
            None => store.list(Some(&prefix)).try_collect().await.unwrap(),
            Some(o) => store
                .list_with_offset(Some(&prefix), &Path::from(o))
                .try_collect()
                .await
                .unwrap(),
        }
    }

    #[tokio::test]
    async fn a_commit_a_log_listing_missed_is_looked_up_and_added() {
        let racing = log_of(3105..=3112, 3111, &[]).await;
        let raw = listed(racing.as_ref(), "t/_delta_log", None).await;
        assert_eq!(
            first_gap(&raw),
            Some((3110, 3112)),
            "the fault did not fire"
        );

        let store = GaplessLogListing::new(racing.clone());
        let all = listed(&store, "t/_delta_log", None).await;
        assert_eq!(first_gap(&all), None);
        assert!(names(&all).contains(&"t/_delta_log/00000000000000003111.json".to_string()));
        assert_eq!(
            all.len(),
            9,
            "8 commits and the checkpoint: {:?}",
            names(&all)
        );
        assert_eq!(
            racing.lookups.load(Ordering::SeqCst),
            1,
            "one HEAD, for 3111"
        );

        let from = listed(
            &store,
            "t/_delta_log",
            Some("t/_delta_log/00000000000000003108.json"),
        )
        .await;
        let mut versions: Vec<u64> = from.iter().filter_map(commit_version).collect();
        versions.sort_unstable();
        assert_eq!(versions, vec![3109, 3110, 3111, 3112]);
    }

    #[tokio::test]
    async fn a_commit_that_is_really_missing_stays_missing_and_data_listings_are_untouched() {
        let racing = log_of(3100..=3112, 3111, &[3102, 3109]).await;
        let store = GaplessLogListing::new(racing.clone());
        let all = listed(&store, "t/_delta_log", None).await;
        assert_eq!(first_gap(&all), Some((3101, 3103)), "{:?}", names(&all));
        assert!(names(&all).contains(&"t/_delta_log/00000000000000003111.json".to_string()));
        assert!(!names(&all).contains(&"t/_delta_log/00000000000000003109.json".to_string()));
        // 3102 is older than the checkpoint (3106): not looked up
        assert_eq!(
            racing.lookups.load(Ordering::SeqCst),
            2,
            "HEAD 3109 and 3111"
        );

        // a table's data files: passed through, nothing looked up
        let racing = log_of(3105..=3112, 3111, &[]).await;
        let store = GaplessLogListing::new(racing.clone());
        let all = listed(&store, "t", None).await;
        assert_eq!(racing.lookups.load(Ordering::SeqCst), 0);
        assert_eq!(all.len(), 9, "{:?}", names(&all));
    }

    #[test]
    fn only_plain_commit_files_have_a_version() {
        let meta = |p: &str| ObjectMeta {
            location: Path::from(p),
            last_modified: chrono::Utc::now(),
            size: 0,
            e_tag: None,
            version: None,
        };
        assert_eq!(
            commit_version(&meta("t/_delta_log/00000000000000000007.json")),
            Some(7)
        );
        assert_eq!(
            commit_version(&meta(
                "t/_delta_log/00000000000000000007.checkpoint.parquet"
            )),
            None
        );
        assert_eq!(
            commit_version(&meta(
                "t/_delta_log/00000000000000000001.00000000000000000007.compacted.json"
            )),
            None
        );
        assert_eq!(commit_version(&meta("t/_delta_log/_last_checkpoint")), None);
        assert_eq!(commit_version(&meta("t/_delta_log/7.json")), None);
        let ckpt = |p: &str| checkpoint_version(&meta(&format!("t/_delta_log/{p}")));
        assert_eq!(ckpt("00000000000000000010.checkpoint.parquet"), Some(10));
        assert_eq!(
            ckpt("00000000000000000010.checkpoint.0000000001.0000000002.parquet"),
            Some(10)
        );
        assert_eq!(ckpt("00000000000000000010.json"), None);
        assert_eq!(ckpt("_last_checkpoint"), None);
        assert!(is_log(Some(&Path::from("lake/bronze/t/_delta_log"))));
        assert!(is_log(Some(&Path::from("lake/bronze/t/_delta_log/"))));
        assert!(!is_log(Some(&Path::from("lake/bronze/t"))));
        assert!(!is_log(None));
    }

    /// On a real directory: a thread commits every millisecond while a long
    /// log is listed. Plain listings miss commits (ext4 walks a directory in
    /// hash order); the wrapped store's never do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_log_listed_while_commits_arrive_shows_no_gap() {
        use object_store::local::LocalFileSystem;
        use std::sync::atomic::AtomicBool;

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        for v in 0..4000u64 {
            std::fs::write(log.join(format!("{v:020}.json")), "{}").unwrap();
        }
        let raw: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let store = GaplessLogListing::new(raw.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let committer = {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || {
                let mut v = 4000u64;
                while !stop.load(Ordering::SeqCst) {
                    std::fs::write(log.join(format!("{v:020}.json")), "{}").unwrap();
                    v += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        let (mut raw_gaps, mut gaps, mut rounds) = (0, 0, 0);
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(4) {
            if first_gap(&listed(raw.as_ref(), "t/_delta_log", None).await).is_some() {
                raw_gaps += 1;
            }
            if let Some(gap) = first_gap(&listed(&store, "t/_delta_log", None).await) {
                gaps += 1;
                eprintln!("gap {gap:?}");
            }
            rounds += 1;
        }
        stop.store(true, Ordering::SeqCst);
        committer.join().unwrap();
        eprintln!("{rounds} rounds: plain listings with a gap {raw_gaps}, wrapped {gaps}");
        assert!(
            raw_gaps > 0,
            "the race did not fire in {rounds} plain listings"
        );
        assert_eq!(gaps, 0, "the wrapped store showed a gap");
    }
}
