//! Names to inodes, and attributes: lookup, forget, getattr.
//!
//! A name is answered, in this order, by the inode table (attributes younger than
//! the TTL), by a recent listing of its directory (with the headers remembered for
//! that object version, see [`crate::cache::meta`]), by a recent lookup that found
//! nothing, and only then by S3 (HEAD and LIST).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::dir::{DirEntry, S3FS_DIR_SUFFIX};
use super::inode::{Attr, Kind, join, parent_of};
use super::listing::Known;
use super::meta::FileMeta;
use super::{Errno, Fs, FsResult};
use crate::store::{ListRequest, ObjectHeaders, ObjectMeta, PutOptions, StoreError};

/// What S3 holds at a path.
pub(super) struct Resolved {
    pub kind: Kind,
    /// The HEAD of the object (a directory's: of its marker, if it has one).
    pub head: Option<ObjectMeta>,
    /// For a directory without a marker: the time of an object in it.
    pub held_since: Option<SystemTime>,
}

/// The ETag under which a directory marker's headers are remembered: a listing
/// shows the directory, not its marker's version.
const MARKER_VERSION: &str = "";

/// Entries whose headers are read ahead of lookups of names one after another.
const HEAD_AHEAD: usize = 32;

/// Key, ETag and Last-Modified of an object version whose headers are remembered.
pub(super) type Remembered = (String, String, Option<std::time::SystemTime>);

/// What a lookup learnt before it enters the table.
enum Found {
    /// What a listing begun at the instant showed.
    Listed(DirEntry, Option<ObjectHeaders>, Instant),
    Resolved(Resolved),
}

impl Fs {
    /// What S3 holds at `path`: a directory (prefix or marker), a file, a symlink,
    /// or nothing. A directory wins over a file of the same name.
    pub(super) async fn resolve(&self, path: &str) -> FsResult<Option<Resolved>> {
        let key = self.key(path);
        let dir_prefix = format!("{key}/");
        let (head, list) = tokio::join!(
            self.store.head(&key),
            self.store.list(ListRequest {
                prefix: &dir_prefix,
                delimiter: None,
                continuation: None,
                max_keys: Some(1),
            })
        );
        let list = list?;
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            // The marker sorts first under its prefix; its metadata is the
            // directory's.
            let head = if list.objects.first().is_some_and(|o| o.key == dir_prefix) {
                self.store.head(&dir_prefix).await.ok()
            } else {
                None
            };
            if let Some(h) = head.as_ref().and_then(|h| h.headers.as_ref()) {
                self.meta.put(&dir_prefix, MARKER_VERSION, None, h);
            }
            return Ok(Some(Resolved {
                kind: Kind::Dir,
                held_since: list.objects.first().and_then(|o| o.last_modified),
                head,
            }));
        }
        match head {
            Ok(meta) => {
                self.learn(&meta);
                let kind = meta
                    .headers
                    .as_ref()
                    .map_or(Kind::File, |h| Kind::of_headers(h, meta.size));
                return Ok(Some(Resolved {
                    kind,
                    head: Some(meta),
                    held_since: None,
                }));
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        match self.store.head(&format!("{key}{S3FS_DIR_SUFFIX}")).await {
            Ok(_) => Ok(Some(Resolved {
                kind: Kind::Dir,
                head: None,
                held_since: None,
            })),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Remember the headers a HEAD returned, for later listings of this version.
    pub(super) fn learn(&self, meta: &ObjectMeta) {
        if let (Some(etag), Some(headers)) = (&meta.etag, &meta.headers) {
            self.meta.put(&meta.key, etag, meta.last_modified, headers);
        }
    }

    /// Remember the headers of version `etag` of `key`, which this mount wrote
    /// with `options` in requests sent after `since`; they are the inode's
    /// headers now.
    pub(super) fn wrote(
        &self,
        key: &str,
        etag: &str,
        options: &PutOptions,
        since: SystemTime,
    ) -> ObjectHeaders {
        let headers = ObjectHeaders {
            content_type: options.content_type.clone(),
            metadata: options.metadata.clone(),
        };
        self.meta.put_written(key, etag, since, &headers);
        headers
    }

    /// The same for a directory's marker (a listing shows no version of it).
    pub(super) fn wrote_marker(&self, marker: &str, options: &PutOptions) -> ObjectHeaders {
        let headers = ObjectHeaders {
            content_type: options.content_type.clone(),
            metadata: options.metadata.clone(),
        };
        self.meta.put(marker, MARKER_VERSION, None, &headers);
        headers
    }

    /// What is at `path`, from recent listings and lookups or from S3; `None` if
    /// nothing is.
    async fn find(&self, path: &str) -> FsResult<Option<Found>> {
        let (dir, name) = (parent_of(path), super::inode::name_of(path));
        let in_order = self.listings().in_order(dir, name);
        let mut known = self.listings().find(dir, name, path);
        if matches!(known, Known::Unknown)
            && self.listings().worth_listing_for_lookups(dir, in_order)
        {
            self.list_for_lookups(dir).await?;
            known = self.listings().find(dir, name, path);
        }
        match known {
            Known::Missing => return Ok(None),
            Known::Listed(entry, listed, for_lookups)
                if entry.kind == Kind::Dir || entry.meta.is_some() =>
            {
                let remembered = self.remembered(path, &entry).await;
                // A listing made for lookups answers as the HEAD it saves would
                // have: with the headers (the mtime `rsync` compares).
                if remembered.is_none() && !for_lookups && !self.head_wanted(&entry) {
                    return Ok(Some(Found::Listed(entry, None, listed)));
                }
                let completed = if remembered.is_none() && for_lookups && in_order {
                    let ((), completed) = tokio::join!(
                        self.head_following(dir, name),
                        self.complete_listed(path, entry, None)
                    );
                    completed
                } else {
                    self.complete_listed(path, entry, remembered).await
                };
                return Ok(
                    completed?.map(|(entry, headers)| Found::Listed(entry, Some(headers), listed))
                );
            }
            Known::Listed(..) | Known::Unknown => {}
        }
        match self.resolve(path).await? {
            Some(resolved) => Ok(Some(Found::Resolved(resolved))),
            None => {
                self.listings().missing(dir, path);
                Ok(None)
            }
        }
    }

    /// Is a listed entry whose headers are not remembered worth a HEAD? With
    /// --head-listed, always; else only an empty object, which may be what a
    /// listing cannot tell: a directory, a fifo, a socket or a device.
    pub(super) fn head_wanted(&self, entry: &DirEntry) -> bool {
        self.config.head_listed
            || (entry.kind != Kind::Dir && entry.meta.as_ref().is_some_and(|m| m.size == 0))
    }

    /// Where the headers of what a listing showed at `path` are remembered.
    pub(super) fn version_of(&self, path: &str, entry: &DirEntry) -> Option<Remembered> {
        match (&entry.kind, &entry.meta) {
            (Kind::Dir, _) => Some((self.dir_prefix(path), MARKER_VERSION.to_string(), None)),
            (_, Some(m)) => Some((m.key.clone(), m.etag.clone()?, m.last_modified)),
            (_, None) => None,
        }
    }

    /// The remembered headers of the version a listing showed at `path`.
    async fn remembered(&self, path: &str, entry: &DirEntry) -> Option<ObjectHeaders> {
        let version = self.version_of(path, entry)?;
        remembered_many(self.meta.clone(), vec![version])
            .await
            .pop()
            .flatten()
    }

    /// What a listing showed at `path`, with its headers: the remembered ones, or
    /// a HEAD's (of the object, or of a directory's marker). `None` if the object
    /// is gone since.
    pub(super) async fn complete_listed(
        &self,
        path: &str,
        entry: DirEntry,
        remembered: Option<ObjectHeaders>,
    ) -> FsResult<Option<(DirEntry, ObjectHeaders)>> {
        if let Some(headers) = remembered {
            return Ok(Some((entry, headers)));
        }
        if entry.kind == Kind::Dir {
            let marker = self.dir_prefix(path);
            let headers = match self.store.head(&marker).await {
                Ok(head) => head.headers.unwrap_or_default(),
                // An implicit directory: no marker, no metadata.
                Err(StoreError::NotFound) => ObjectHeaders::default(),
                Err(e) => return Err(e.into()),
            };
            self.meta.put(&marker, MARKER_VERSION, None, &headers);
            return Ok(Some((entry, headers)));
        }
        match self.store.head(&self.key(path)).await {
            Ok(head) => {
                self.learn(&head);
                let headers = head.headers.clone().unwrap_or_default();
                let entry = DirEntry {
                    meta: Some(head),
                    ..entry
                };
                Ok(Some((entry, headers)))
            }
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Read the headers of the entries that follow `name` in the listing of
    /// `dir` (made for lookups), in parallel, for the lookups of names one after
    /// another that are likely to come next. What fails is left to the lookup.
    async fn head_following(&self, dir: &str, name: &str) {
        let following: Vec<(DirEntry, Remembered)> = self
            .listings()
            .following(dir, name, HEAD_AHEAD)
            .into_iter()
            .filter_map(|e| {
                let version = self.version_of(&join(dir, &e.name), &e)?;
                Some((e, version))
            })
            .collect();
        let versions = following.iter().map(|(_, v)| v.clone()).collect();
        let remembered = remembered_many(self.meta.clone(), versions).await;
        let wanted = following
            .into_iter()
            .zip(remembered)
            .filter_map(|((entry, _), r)| r.is_none().then_some(entry));
        let heads = wanted.map(|entry| async move {
            let path = join(dir, &entry.name);
            if let Err(e) = self.complete_listed(&path, entry, None).await {
                tracing::debug!("reading the headers of {path} ahead: {e:?}");
            }
        });
        futures::future::join_all(heads).await;
    }

    /// Does anything exist at `path`, and what kind is it?
    pub(super) async fn kind_at(&self, path: &str) -> FsResult<Option<Kind>> {
        if let Some(inode) = self.known(path) {
            return Ok(Some(inode.kind));
        }
        Ok(self.find(path).await?.map(|found| match found {
            Found::Listed(entry, headers, _) => listed_kind(&entry, headers.as_ref()),
            Found::Resolved(r) => r.kind,
        }))
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if let Some(inode) = self.known(&path) {
            let mut state = self.state();
            let inode = state.inodes.lookup(&path, inode.kind, self.mount_time);
            return Ok(self.attr(&inode.clone()));
        }
        let seen = Instant::now();
        let found = match self.find(&path).await {
            Ok(found) => found,
            // S3 cannot be asked (an outage): a directory holding files whose
            // changes S3 lacks is there all the same, so that they can be
            // reached (read, their upload state asked for).
            Err(e) => return self.holding_unsaved(&path).ok_or(e),
        };
        match found.ok_or(Errno::ENOENT)? {
            Found::Listed(entry, headers, listed) => {
                Ok(self.enter_listed(&path, &entry, headers, listed))
            }
            Found::Resolved(resolved) => {
                let changed = self.changed_here(&path);
                let mut state = self.state();
                let inode = state.inodes.lookup(&path, resolved.kind, self.mount_time);
                inode.changed_here = inode.changed_here.max(changed);
                inode.old_dir_object = resolved.kind == Kind::Dir
                    && resolved
                        .head
                        .as_ref()
                        .is_some_and(|h| !h.key.ends_with('/'));
                if !inode.dirty {
                    match &resolved.head {
                        Some(head) => inode.set_head(head, seen),
                        None => inode.validated = Some(Instant::now()),
                    }
                }
                if let Some(t) = resolved.held_since {
                    inode.modified = t;
                }
                let inode = inode.clone();
                Ok(self.attr(&inode))
            }
        }
    }

    /// The directory at `path`, with one more kernel reference, if files below it
    /// have changes S3 lacks.
    fn holding_unsaved(&self, path: &str) -> Option<Attr> {
        let mut state = self.state();
        let ino = state.inodes.ino_of(path)?;
        if state.inodes.get(ino)?.kind != Kind::Dir {
            return None;
        }
        state.inodes.unsaved_below(path).next()?;
        let inode = state
            .inodes
            .lookup(path, Kind::Dir, self.mount_time)
            .clone();
        Some(self.attr(&inode))
    }

    /// Enter what a listing begun at `seen` showed at `path` in the table, with
    /// one more kernel reference, and trust it for the TTL.
    pub(super) fn enter_listed(
        &self,
        path: &str,
        entry: &DirEntry,
        headers: Option<ObjectHeaders>,
        seen: Instant,
    ) -> Attr {
        let changed = self.changed_here(path);
        let mut state = self.state();
        // An inode with changes of its own keeps them.
        if let Some(ino) = state.inodes.ino_of(path)
            && let Some(inode) = state.inodes.get(ino)
            && (inode.dirty || inode.local)
        {
            let kind = inode.kind;
            let inode = state.inodes.lookup(path, kind, self.mount_time).clone();
            return self.attr(&inode);
        }
        let kind = listed_kind(entry, headers.as_ref());
        let inode = state.inodes.lookup(path, kind, self.mount_time);
        inode.changed_here = inode.changed_here.max(changed);
        // Listed as an object, yet a directory: s3fs's old form.
        inode.old_dir_object = kind == Kind::Dir && entry.meta.is_some();
        match &entry.meta {
            Some(meta) => inode.set_listed(meta, headers, seen),
            None => {
                if let Some(h) = headers {
                    inode.take_meta(FileMeta::from_metadata(&h.metadata));
                    inode.headers = Some(h);
                }
                inode.validated = Some(Instant::now());
            }
        }
        let inode = inode.clone();
        self.attr(&inode)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let mut state = self.state();
        let open = state.handles.open.contains_key(&ino);
        state.inodes.forget(ino, n, open);
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        if self.is_fresh(&inode) || inode.kind == Kind::Dir || !inode.is_linked() {
            return Ok(self.attr(&inode));
        }
        self.revalidate(ino).await
    }

    /// HEAD the object again and take what S3 says.
    pub(super) async fn revalidate(&self, ino: u64) -> FsResult<Attr> {
        let path = self.inode(ino)?.path;
        let seen = Instant::now();
        let result = self.store.head(&self.key(&path)).await;
        if let Ok(head) = &result {
            self.learn(head);
        }
        let mut state = self.state();
        let inode = state.inodes.get_mut(ino).ok_or(Errno::ENOENT)?;
        if !inode.dirty && inode.path == path {
            inode.set_head(&result?, seen);
        }
        let inode = inode.clone();
        Ok(self.attr(&inode))
    }

    /// The inode's Content-Type and metadata, with a HEAD if none has been made
    /// (or remembered) for its version.
    pub(super) async fn ensure_headers(&self, ino: u64) -> FsResult<()> {
        let inode = self.inode(ino)?;
        if inode.headers.is_some() || inode.local {
            return Ok(());
        }
        let key = if inode.kind == Kind::Dir {
            self.dir_prefix(&inode.path)
        } else {
            self.key(&inode.path)
        };
        if key.is_empty() {
            // The root of a bucket: no key, so no metadata.
            return Ok(());
        }
        let seen = Instant::now();
        let head = match self.store.head(&key).await {
            Ok(head) => head,
            // An implicit directory has no marker and so no metadata (which
            // the kernel's permission checks ask for, ACLs, again and again).
            Err(StoreError::NotFound) if inode.kind == Kind::Dir => {
                if let Some(inode) = self.state().inodes.get_mut(ino)
                    && inode.headers.is_none()
                {
                    inode.headers = Some(ObjectHeaders::default());
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.learn(&head);
        let mut state = self.state();
        if let Some(inode) = state.inodes.get_mut(ino)
            && !inode.dirty
        {
            inode.set_head(&head, seen);
        }
        Ok(())
    }
}

/// The kind of a listed entry: a listing knows directories from objects, the
/// remembered metadata tells symlinks, fifos and sockets from files.
fn listed_kind(entry: &DirEntry, headers: Option<&ObjectHeaders>) -> Kind {
    match (entry.kind, headers) {
        (Kind::Dir, _) => Kind::Dir,
        (_, Some(h)) => Kind::of_headers(h, entry.meta.as_ref().map_or(0, |m| m.size)),
        (kind, None) => kind,
    }
}

/// Remembered headers, looked up for many entries at once off the runtime.
pub(super) async fn remembered_many(
    meta: Arc<crate::cache::meta::MetaCache>,
    wanted: Vec<Remembered>,
) -> Vec<Option<ObjectHeaders>> {
    tokio::task::spawn_blocking(move || {
        wanted
            .iter()
            .map(|(key, etag, time)| meta.get(key, etag, *time))
            .collect()
    })
    .await
    .unwrap_or_default()
}
