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
//!
//! The same walk makes a listing cost grow with the log: `readdir` visits
//! every entry, and a busy table's log keeps about 95,000 entries a day at
//! one commit a second (`delta.logRetentionDuration`, 30 days by default).
//! The kernel lists a log *from a version* (`list_with_offset` at
//! `_delta_log/<version>`) each time it opens a table or brings an open one
//! up to date, and that version is recent: the last checkpoint, or the
//! version the caller already has. Such a listing is answered by name
//! instead ([`probe`]): each commit and checkpoint from that version until
//! the first version without a commit, and `_last_checkpoint`, so its cost
//! follows the versions since, not the log's length. Whenever the names
//! cannot be trusted to be complete (nothing at the first version, a
//! multi-part or v2 checkpoint hint, a long range), the directory is listed.

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

/// At most this many versions are looked up by name per listing from a
/// version; a longer range (a listing of history) is listed. A table opened
/// afresh is read from its last checkpoint: bronze checkpoints every
/// `checkpoint_interval` (10) commits, delta-rs every 100 by default.
const MAX_PROBED: u64 = 256;

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

/// The version an offset names when it is a bare version
/// (`_delta_log/00000000000000003110`), as the kernel lists from.
fn bare_version(offset: &Path) -> Option<u64> {
    let name = offset.filename()?;
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// `dir/name`'s metadata, or `None` when there is no such file.
async fn head(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    name: &str,
) -> object_store::Result<Option<ObjectMeta>> {
    match store.head(&dir.clone().join(name)).await {
        Ok(meta) => Ok(Some(meta)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entries of log directory `dir` from version `from` on, found by
/// name: the commit and the single-part checkpoint of each version from
/// `from` to the last version with a commit, and `_last_checkpoint`, which
/// is what a listing of `dir` from `from` returns for a log written by
/// delta-rs (names of other kinds, such as `.crc` files or temporary
/// files, are optional to the kernel or not read at all). A later version
/// never exists without the one before it: a writer commits `n + 1` only
/// after `n`, and log cleanup removes only versions older than the last
/// checkpoint.
///
/// `None` when the directory must be listed instead: neither a commit nor
/// a checkpoint at `from` nor at `from - 1` (a log cleaned up past it, or
/// no log; nothing at `from` after `from - 1` is an up-to-date caller), a
/// `_last_checkpoint` at or after `from` naming a checkpoint not found here
/// (multi-part or v2, written by another engine), or more than
/// [`MAX_PROBED`] versions.
async fn probe(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    from: u64,
) -> object_store::Result<Option<Vec<ObjectMeta>>> {
    let mut found = Vec::new();
    for v in from.. {
        if v - from >= MAX_PROBED {
            return Ok(None);
        }
        let commit = head(store, dir, &format!("{v:020}.json")).await?;
        let checkpoint = head(store, dir, &format!("{v:020}.checkpoint.parquet")).await?;
        if commit.is_none() && (v > from || checkpoint.is_none()) {
            break;
        }
        found.extend(checkpoint);
        found.extend(commit);
    }
    if found.is_empty() {
        // Nothing at `from`: the log ends just before it (the caller is up
        // to date) when `from - 1` is there; otherwise it was cleaned up
        // past `from`, or there is no log, and a listing decides.
        let Some(before) = from.checked_sub(1) else {
            return Ok(None);
        };
        if head(store, dir, &format!("{before:020}.json"))
            .await?
            .is_none()
            && head(store, dir, &format!("{before:020}.checkpoint.parquet"))
                .await?
                .is_none()
        {
            return Ok(None);
        }
    }
    let hint = match store.get(&dir.clone().join("_last_checkpoint")).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(Some(found)),
        Err(e) => return Err(e),
    };
    let meta = hint.meta.clone();
    let bytes = hint.bytes().await?;
    let Ok(hint) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(None);
    };
    let Some(version) = hint.get("version").and_then(|v| v.as_u64()) else {
        return Ok(None);
    };
    if version >= from {
        let single_part = hint
            .get("parts")
            .is_none_or(|p| p.is_null() || p.as_u64() == Some(1))
            && hint.get("v2Checkpoint").is_none_or(|p| p.is_null());
        let listed = found.iter().any(|m| checkpoint_version(m) == Some(version));
        if !(single_part && listed) {
            return Ok(None);
        }
    }
    found.push(meta);
    Ok(Some(found))
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
        let from = bare_version(offset).filter(|_| is_log(prefix));
        let dir: Path = offset
            .parts()
            .take(offset.parts().count().saturating_sub(1))
            .collect();
        let (Some(from), true) = (from, prefix == Some(&dir)) else {
            return self.gapless(prefix, move |s| s.list_with_offset(p.as_ref(), &o));
        };
        let inner = Arc::clone(&self.inner);
        let walk = self.gapless(prefix, move |s| s.list_with_offset(p.as_ref(), &o));
        stream::once(async move {
            Ok::<_, object_store::Error>(match probe(&inner, &dir, from).await? {
                Some(found) => stream::iter(found.into_iter().map(Ok)).boxed(),
                None => walk,
            })
        })
        .try_flatten()
        .boxed()
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
        /// Directory listings asked of it.
        lists: AtomicUsize,
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
            self.lists.fetch_add(1, Ordering::SeqCst);
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
            lists: AtomicUsize::new(0),
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

    /// A log written as delta-rs writes one: commits `versions`, a
    /// checkpoint at `checkpoint` named by `_last_checkpoint` (`hint`), and
    /// a data file; no listing misses anything.
    async fn delta_log(
        versions: std::ops::RangeInclusive<u64>,
        checkpoint: Option<u64>,
        hint: Option<&str>,
    ) -> Arc<Racing> {
        let store = Racing {
            inner: InMemory::new(),
            hidden: Path::from("nothing"),
            lookups: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
        };
        let put = async |name: String, body: String| {
            store
                .put(&Path::from(format!("t/_delta_log/{name}")), body.into())
                .await
                .unwrap();
        };
        for v in versions {
            put(format!("{v:020}.json"), "{}".into()).await;
        }
        if let Some(c) = checkpoint {
            put(format!("{c:020}.checkpoint.parquet"), "x".into()).await;
        }
        if let Some(h) = hint {
            put("_last_checkpoint".into(), h.into()).await;
        }
        store
            .put(&Path::from("t/part-0.parquet"), "x".into())
            .await
            .unwrap();
        Arc::new(store)
    }

    #[tokio::test]
    async fn a_log_listed_from_a_version_is_found_by_name_and_equals_the_listing() {
        let log = delta_log(
            3100..=3112,
            Some(3110),
            Some(r#"{"version":3110,"size":7}"#),
        )
        .await;
        let store = GaplessLogListing::new(log.clone());
        for from in [3110u64, 3111, 3112, 3113] {
            let offset = format!("t/_delta_log/{from:020}");
            let want = names(&listed(&log.inner, "t/_delta_log", Some(&offset)).await);
            let lists = log.lists.load(Ordering::SeqCst);
            let got = names(&listed(&store, "t/_delta_log", Some(&offset)).await);
            assert_eq!(got, want, "from {from}");
            let walked = log.lists.load(Ordering::SeqCst) - lists;
            assert_eq!(walked, 0, "listings from {from}");
        }
        // From the checkpoint: its file, 3 commits, the hint. Past the last
        // commit (an up-to-date caller): the hint alone.
        let got = listed(
            &store,
            "t/_delta_log",
            Some("t/_delta_log/00000000000000003110"),
        )
        .await;
        assert_eq!(got.len(), 5, "{:?}", names(&got));
        let got = listed(
            &store,
            "t/_delta_log",
            Some("t/_delta_log/00000000000000003113"),
        )
        .await;
        assert_eq!(
            names(&got),
            vec!["t/_delta_log/_last_checkpoint".to_string()]
        );
    }

    #[tokio::test]
    async fn a_log_the_names_may_not_cover_is_listed() {
        let from_version = async |store: &GaplessLogListing, v: u64| {
            let offset = format!("t/_delta_log/{v:020}");
            names(&listed(store, "t/_delta_log", Some(&offset)).await)
        };
        // Cleaned up before 3105: nothing at 3100 nor at 3099.
        let log = delta_log(3105..=3112, Some(3110), Some(r#"{"version":3110}"#)).await;
        let store = GaplessLogListing::new(log.clone());
        let got = from_version(&store, 3100).await;
        assert_eq!(log.lists.load(Ordering::SeqCst), 1);
        assert_eq!(
            got.len(),
            10,
            "8 commits, the checkpoint, the hint: {got:?}"
        );
        // A multi-part checkpoint hint (another engine): its parts have
        // names this does not look for.
        let log = delta_log(3100..=3112, None, Some(r#"{"version":3110,"parts":2}"#)).await;
        for part in 1..=2 {
            log.put(
                &Path::from(format!(
                    "t/_delta_log/00000000000000003110.checkpoint.{part:010}.0000000002.parquet"
                )),
                "x".into(),
            )
            .await
            .unwrap();
        }
        let store = GaplessLogListing::new(log.clone());
        let got = from_version(&store, 3110).await;
        assert_eq!(log.lists.load(Ordering::SeqCst), 1);
        assert!(
            got.iter().any(|n| n.contains("checkpoint.0000000002")),
            "{got:?}"
        );
        // A hint naming a checkpoint that is not there, or no hint at all.
        let log = delta_log(3100..=3112, None, Some(r#"{"version":3110}"#)).await;
        let store = GaplessLogListing::new(log.clone());
        from_version(&store, 3110).await;
        assert_eq!(log.lists.load(Ordering::SeqCst), 1);
        let log = delta_log(3100..=3112, None, None).await;
        let store = GaplessLogListing::new(log.clone());
        assert_eq!(from_version(&store, 3110).await.len(), 3);
        assert_eq!(log.lists.load(Ordering::SeqCst), 0);
        // History from version 0 of a long log: listed, not looked up
        // version by version.
        let log = delta_log(0..=MAX_PROBED + 10, None, None).await;
        let store = GaplessLogListing::new(log.clone());
        assert_eq!(from_version(&store, 0).await.len() as u64, MAX_PROBED + 11);
        assert_eq!(log.lists.load(Ordering::SeqCst), 1);
    }
}
