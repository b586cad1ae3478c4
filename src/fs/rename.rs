//! rename(2). S3 has no rename: a file is copied server-side (CopyObject, its
//! metadata kept, its Content-Type that of the new name) and then deleted; a
//! directory is moved key by key, a page of the listing at a time, with bounded
//! parallelism. Neither is atomic: another S3 client may see both names, or a
//! directory half moved, for a moment; a failure part way leaves it half moved.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::{Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};

use super::inode::Kind;
use super::{Change, Errno, Fs, FsResult, PARALLEL_COPIES, SharedOpenFile};
use crate::store::{CopyOptions, ListRequest, PutOptions};
use crate::write::staged::Staged;
use crate::write::upload::MAX_COPY_SIZE;

impl Fs {
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.check_writable()?;
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(Errno::EINVAL);
        }
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        if from == to {
            return Ok(());
        }
        let kind = self.kind_at(&from).await?.ok_or(Errno::ENOENT)?;
        if kind == Kind::Dir && to.starts_with(&format!("{from}/")) {
            return Err(Errno::EINVAL);
        }
        let target = self.kind_at(&to).await?;
        match (kind, target) {
            (_, Some(_)) if flags & libc::RENAME_NOREPLACE != 0 => return Err(Errno::EEXIST),
            (Kind::Dir, Some(Kind::Dir)) => self.check_empty(&to).await?,
            (Kind::Dir, Some(_)) => return Err(Errno::ENOTDIR),
            (_, Some(Kind::Dir)) => return Err(Errno::EISDIR),
            _ => {}
        }
        if kind == Kind::Dir {
            self.rename_dir(&from, &to).await?;
        } else {
            self.rename_file(&from, &to, target.is_some()).await?;
        }
        self.entry_changed(&from);
        self.entry_changed(&to);
        Ok(())
    }

    /// The inode at `path`, entered in the table (without a kernel reference) if
    /// the kernel has not looked it up.
    async fn inode_at(&self, path: &str) -> FsResult<u64> {
        if let Some(ino) = self.state().inodes.ino_of(path) {
            return Ok(ino);
        }
        let seen = Instant::now();
        let resolved = self.resolve(path).await?.ok_or(Errno::ENOENT)?;
        let changed = self.changed_here(path);
        let mut state = self.state();
        let inode = state.inodes.entry(path, resolved.kind, self.mount_time);
        inode.changed_here = inode.changed_here.max(changed);
        if let Some(head) = &resolved.head {
            inode.set_head(head, seen);
        }
        Ok(inode.ino)
    }

    /// `replacing`: something is at `to`.
    async fn rename_file(&self, from: &str, to: &str, replacing: bool) -> FsResult<()> {
        let ino = self.inode_at(from).await?;
        self.ensure_headers(ino).await?;
        // Handles open on the file being replaced keep reading what they had.
        let replaced = self.state().inodes.ino_of(to);
        if let Some(replaced) = replaced {
            self.keep_open_file(replaced).await?;
        }
        let replaced_object = replacing
            && !replaced
                .and_then(|r| self.state().inodes.get(r).map(|i| i.local))
                .unwrap_or(false);
        // Hold the file's write state so no upload runs under the old name meanwhile.
        let open = self.open_state(ino);
        let mut guard = match &open {
            Some(of) => Some(of.lock().await),
            None => None,
        };
        // Bytes offloaded are in the parts of an upload to this key alone.
        if guard
            .as_ref()
            .and_then(|of| of.staged.as_ref())
            .is_some_and(Staged::has_offloaded)
        {
            return Err(Errno::EBUSY);
        }
        let inode = self.inode(ino)?;
        let now = SystemTime::now();
        let (from_key, to_key) = (self.key(from), self.key(to));
        let mut moved = inode.clone();
        moved.path = to.to_string();
        moved.meta.ctime = Some(now);
        let mut copied = None;
        if !inode.local {
            // A file with unsaved changes moves its last uploaded version, which the
            // changes are staged over; they go up under the new name at close.
            let size = if inode.dirty {
                self.store.head(&from_key).await?.size
            } else {
                inode.size
            };
            let mut options = self.put_options(&to_key, &moved);
            if let Some(kind) = renamed_content_type(&from_key, &to_key) {
                options.content_type = Some(kind);
            }
            let copy = CopyOptions {
                replace: Some(options.clone()),
                if_match: inode.etag.clone(),
            };
            let since = SystemTime::now();
            let etag = self.uploader.copy(&from_key, &to_key, size, &copy).await?;
            // Changes move onto the copy only if it is of the version they are
            // based on; else the upload meets the other writer's as a conflict.
            if let Some(staged) = guard.as_mut().and_then(|of| of.staged.as_mut())
                && staged.base().is_some_and(|b| b.etag == inode.etag)
            {
                staged.rebase(&to_key, etag.clone());
            }
            self.published(&to_key, Change::Written { new: !replacing });
            self.store.delete(&from_key).await?;
            self.published(&from_key, Change::Deleted);
            let headers = self.wrote(&to_key, &etag, &options, since);
            copied = Some((etag, headers));
        } else if replaced_object {
            // The new name's object is replaced by a file not uploaded yet: it goes
            // now, or it would be found again if the file were removed unsaved.
            self.store.delete(&to_key).await?;
            self.published(&to_key, Change::Deleted);
        }
        let copied_version = inode.etag.clone();
        {
            let mut state = self.state();
            state.inodes.rename(ino, to);
            if let Some(inode) = state.inodes.get_mut(ino) {
                inode.meta.ctime = Some(now);
                if let Some((etag, headers)) = copied {
                    if let Some(record) = guard.as_mut().and_then(|of| of.record.as_mut())
                        && record.based_on.is_some()
                        && record.based_on == copied_version
                    {
                        // The changes are now based on the copy.
                        record.based_on = Some(etag.clone());
                    }
                    inode.stored(etag);
                    inode.headers = Some(headers);
                }
            }
            if open.is_none() {
                state.inodes.remove_if_unreferenced(ino);
            }
        }
        if let Some(of) = guard.as_deref() {
            // The record names the new key (and the copy the changes are based on).
            self.save_record(&self.inode(ino)?, of, false).await?;
        }
        drop(guard);
        if let Some(replaced) = replaced
            && replaced != ino
            && let Some(of) = self.open_state(replaced)
        {
            self.drop_changes(&mut *of.lock().await).await;
        }
        Ok(())
    }

    async fn rename_dir(&self, from: &str, to: &str) -> FsResult<()> {
        let _markers = self.dir_times.markers.lock().await;
        // An old `dir` object is not under `dir/`: it becomes a marker first.
        let dir = self.inode(self.inode_at(from).await?)?;
        if dir.old_dir_object {
            self.write_marker(&dir, None).await?;
        }
        let (from_prefix, to_prefix) = (self.dir_prefix(from), self.dir_prefix(to));
        // Hold every open file below the directory (in inode order, so two renames
        // cannot deadlock): none uploads under an old name meanwhile.
        let mut open: Vec<(u64, SharedOpenFile)> = {
            let state = self.state();
            state
                .inodes
                .tree(from)
                .into_iter()
                .filter_map(|ino| {
                    state
                        .handles
                        .open
                        .get(&ino)
                        .map(|(_, of)| (ino, of.clone()))
                })
                .collect()
        };
        open.sort_by_key(|(ino, _)| *ino);
        let mut guards = Vec::with_capacity(open.len());
        for (_, of) in &open {
            guards.push(of.lock().await);
        }
        // As for a file: offloaded bytes are in an upload to its key alone.
        if guards
            .iter()
            .any(|of| of.staged.as_ref().is_some_and(Staged::has_offloaded))
        {
            return Err(Errno::EBUSY);
        }
        let mut moved_any = false;
        // New ETags of the moved objects the table knows (a copy may change it).
        let mut new_etags: Vec<(u64, Option<String>, String)> = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .store
                .list(ListRequest {
                    prefix: &from_prefix,
                    delimiter: None,
                    continuation: token.take(),
                    max_keys: None,
                })
                .await?;
            let jobs: Vec<(String, String, u64)> = page
                .objects
                .iter()
                .map(|o| {
                    let rest = o.key.strip_prefix(from_prefix.as_str()).unwrap_or_default();
                    (o.key.clone(), format!("{to_prefix}{rest}"), o.size)
                })
                .collect();
            let since = SystemTime::now();
            let copied: HashMap<String, String> = futures::stream::iter(jobs)
                .map(|(from_key, to_key, size)| self.move_key(from_key, to_key, size))
                .buffer_unordered(PARALLEL_COPIES)
                .try_collect()
                .await?;
            let prefixes = (from_prefix.as_str(), to_prefix.as_str());
            self.carry_headers(&page.objects, &copied, prefixes, since)
                .await;
            // What was listed under the old name, by key: a change is moved onto
            // the copy only if the copy is of the version it was based on (another
            // writer's version moves too, and the upload then meets it as a
            // conflict instead of replacing it).
            let listed: HashMap<&str, Option<&str>> = page
                .objects
                .iter()
                .map(|o| (o.key.as_str(), o.etag.as_deref()))
                .collect();
            for guard in &mut guards {
                if let Some(staged) = guard.staged.as_mut()
                    && let Some(base) = staged.base().cloned()
                    && let Some(etag) = copied.get(&base.key)
                    && base.etag.is_some()
                    && listed.get(base.key.as_str()) == Some(&base.etag.as_deref())
                {
                    let rest = base
                        .key
                        .strip_prefix(from_prefix.as_str())
                        .unwrap_or_default();
                    staged.rebase(&format!("{to_prefix}{rest}"), etag.clone());
                }
            }
            futures::stream::iter(copied.keys().cloned().collect::<Vec<_>>())
                .map(|key| self.delete_key(key))
                .buffer_unordered(PARALLEL_COPIES)
                .try_collect::<Vec<()>>()
                .await?;
            {
                let state = self.state();
                for (key, etag) in &copied {
                    let path = key.strip_prefix(self.config.prefix.as_str());
                    if let Some(ino) = path.and_then(|p| state.inodes.ino_of(p)) {
                        let was = listed.get(key.as_str()).copied().flatten();
                        new_etags.push((ino, was.map(str::to_string), etag.clone()));
                    }
                }
            }
            moved_any |= !copied.is_empty();
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        // s3fs's marker for the old name goes; an empty directory keeps a marker.
        self.store
            .delete(&format!(
                "{}{}",
                self.key(from),
                super::dir::S3FS_DIR_SUFFIX
            ))
            .await?;
        if !moved_any {
            self.store
                .put(
                    &to_prefix,
                    bytes::Bytes::new(),
                    &PutOptions::default(),
                    None,
                )
                .await?;
        }
        {
            let mut state = self.state();
            state.inodes.rename_tree(from, to);
            let mut listings = self.listings();
            listings.moved(from);
            listings.moved(to);
            if let Some(dir) = state.inodes.by_path_mut(to) {
                dir.meta.ctime = Some(SystemTime::now());
            }
            for (ino, was, etag) in new_etags {
                if let Some(inode) = state.inodes.get_mut(ino) {
                    inode.stored(etag.clone());
                }
                if let Some(i) = open.iter().position(|(o, _)| *o == ino)
                    && let Some(record) = guards[i].record.as_mut()
                    && record.based_on.is_some()
                    && record.based_on == was
                {
                    record.based_on = Some(etag);
                }
            }
        }
        // The records name the new keys.
        for ((ino, _), guard) in open.iter().zip(&guards) {
            if let Ok(inode) = self.inode(*ino) {
                self.save_record(&inode, guard, false).await?;
            }
        }
        Ok(())
    }

    /// The remembered headers of moved objects go with them (a copy keeps the
    /// metadata but not always the ETag); the copies were made after `since`.
    async fn carry_headers(
        &self,
        moved: &[crate::store::ObjectMeta],
        copied: &HashMap<String, String>,
        (from_prefix, to_prefix): (&str, &str),
        since: SystemTime,
    ) {
        let carried: Vec<(String, String, Option<SystemTime>, String, String)> = moved
            .iter()
            .filter_map(|o| {
                let new_etag = copied.get(&o.key)?.clone();
                let rest = o.key.strip_prefix(from_prefix)?;
                Some((
                    o.key.clone(),
                    o.etag.clone()?,
                    o.last_modified,
                    format!("{to_prefix}{rest}"),
                    new_etag,
                ))
            })
            .collect();
        let meta = self.meta.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (key, etag, time, new_key, new_etag) in carried {
                if let Some(headers) = meta.get(&key, &etag, time) {
                    meta.put_written(&new_key, &new_etag, since, &headers);
                }
            }
        })
        .await;
    }

    /// First half of moving a key: copy it; returns the old key and the copy's ETag.
    /// The target directory was empty or absent: the new keys are new.
    async fn move_key(&self, from: String, to: String, size: u64) -> FsResult<(String, String)> {
        let etag = self.copy_keeping_metadata(&from, &to, size).await?;
        self.published(&to, Change::Written { new: true });
        Ok((from, etag))
    }

    async fn delete_key(&self, key: String) -> FsResult<()> {
        self.store.delete(&key).await?;
        self.published(&key, Change::Deleted);
        Ok(())
    }

    /// Copy an object keeping its metadata: CopyObject does that by itself, but a
    /// multipart copy (above 5 GiB) must be told it.
    async fn copy_keeping_metadata(&self, from: &str, to: &str, size: u64) -> FsResult<String> {
        let replace = if size > MAX_COPY_SIZE {
            let head = self.store.head(from).await?;
            let headers = head.headers.unwrap_or_default();
            Some(PutOptions {
                content_type: headers.content_type,
                metadata: headers.metadata,
            })
        } else {
            None
        };
        let options = CopyOptions {
            replace,
            if_match: None,
        };
        Ok(self.uploader.copy(from, to, size, &options).await?)
    }
}

/// The Content-Type of a file renamed from `from` to `to`, where it follows the
/// name, as s3fs makes it: the new name's type, or application/octet-stream if
/// the new name says none (`mv big.txt big.txt-copy`). `None` (keep the
/// object's) when neither name says a type.
fn renamed_content_type(from: &str, to: &str) -> Option<String> {
    let (old, new) = (
        mime_guess::from_path(from).first_raw(),
        mime_guess::from_path(to).first_raw(),
    );
    match (old, new) {
        (None, None) => None,
        (_, Some(new)) => Some(new.to_string()),
        (Some(_), None) => Some("application/octet-stream".to_string()),
    }
}
