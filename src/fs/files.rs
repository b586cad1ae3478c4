//! Files: open, create, read, write, truncate, close (flush and release), fsync.
//!
//! Writes land in the file's [`Staged`] view, shared by all handles of the file;
//! flush (the opener's close) and fsync upload it.

use std::ffi::OsStr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::inode::{Attr, Kind};
use super::meta;
use super::{Caller, Errno, FileHandle, Fs, FsResult, OpenFile, PARALLEL_PARTS, SharedOpenFile};
use crate::cache::ObjectVersion;
use crate::read::Reader;
use crate::write::WriteError;
use crate::write::offload;
use crate::write::staged::{Base, Staged};
use crate::write::staging::StagingReader;
use crate::write::upload::{FIRST_PART_SIZE, part_range};

/// FALLOC_FL_KEEP_SIZE: reserve without changing the size (nothing to do here).
const KEEP_SIZE: i32 = 1;
/// Files whose upload is left to the background, at most: past it, close()
/// waits for its upload.
const MAX_BACKGROUND_FILES: usize = 1024;

impl Fs {
    /// The write state of `ino`, registering one more user of it; `true` if this
    /// call opened it (and so must close it with [`Self::close_file`]).
    fn open_file(&self, ino: u64) -> (SharedOpenFile, bool) {
        let mut state = self.state();
        let entry = state.handles.open.entry(ino).or_default();
        entry.0 += 1;
        (entry.1.clone(), entry.0 == 1)
    }

    /// Give `of` a staged view of the file, over the object as it is now;
    /// `changes`: for changes to upload (else only to keep what handles read).
    pub(super) fn ensure_staged<'a>(
        &self,
        ino: u64,
        of: &'a mut OpenFile,
        changes: bool,
    ) -> FsResult<&'a mut Staged> {
        if of.staged.is_none() {
            let inode = self.inode(ino)?;
            let key = self.key(&inode.path);
            let file = self.staging.create(&key, !changes)?;
            let base = (!inode.local && inode.size > 0).then(|| Base {
                key,
                etag: inode.etag.clone(),
                len: inode.size,
            });
            of.staged = Some(Staged::new(file, base, inode.size));
        }
        of.staged.as_mut().ok_or(Errno::EIO)
    }

    /// Record a change of content: the file is dirty, with this size.
    fn mark_written(&self, ino: u64, size: u64) {
        let now = SystemTime::now();
        let mut state = self.state();
        if let Some(inode) = state.inodes.get_mut(ino) {
            inode.dirty = true;
            inode.size = size;
            inode.modified = now;
            inode.meta.mtime = Some(now);
            inode.meta.ctime = Some(now);
        }
    }

    /// Open a file for `caller`, whose close() will upload it.
    pub async fn open(&self, ino: u64, flags: i32, caller: Caller) -> FsResult<u64> {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writable {
            self.check_writable()?;
        }
        let inode = self.inode(ino)?;
        match inode.kind {
            Kind::File => {}
            Kind::Dir => return Err(Errno::EISDIR),
            Kind::Symlink => return Err(Errno::ELOOP),
            // The kernel opens fifos and sockets itself, and devices not at all
            // (the mount is `nodev`).
            Kind::Fifo | Kind::Socket | Kind::BlockDevice | Kind::CharDevice => {
                return Err(Errno::EINVAL);
            }
        }
        // Close-to-open: a file opened after the TTL sees what S3 has now.
        if !self.is_fresh(&inode) && inode.is_linked() {
            self.revalidate(ino).await?;
        }
        // The upload of a change replaces the object's metadata: it must start
        // from what the object has (mode, owner, attributes), not from what a
        // listing showed.
        if writable && !inode.local {
            self.ensure_headers(ino).await?;
        }
        let (open, _) = self.open_file(ino);
        if writable && flags & libc::O_TRUNC != 0 {
            let mut of = open.lock().await;
            let result = async {
                self.begin_change(ino, &mut of).await?.set_len(0).await?;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                drop(of);
                self.close_file(ino).await;
                return Err(e);
            }
            self.mark_written(ino, 0);
            // Another handle may be sending the file's parts while it writes.
            self.stream(ino, &mut of, 0..u64::MAX, None).await;
        }
        Ok(self.new_handle(ino, writable, caller.process))
    }

    /// May the kernel keep the pages it has cached of `ino` at the open just made?
    /// Yes while the object is the version it cached them from.
    pub fn keep_cache(&self, ino: u64) -> bool {
        let mut state = self.state();
        let Some(inode) = state.inodes.get_mut(ino) else {
            return false;
        };
        let keep = inode.etag.is_some() && inode.cached_version == inode.etag;
        inode.cached_version = inode.etag.clone();
        keep
    }

    /// Does a program have `ino` open?
    fn has_handles(&self, ino: u64) -> bool {
        self.state().handles.files.values().any(|h| h.ino == ino)
    }

    fn new_handle(&self, ino: u64, writable: bool, opener: u32) -> u64 {
        let fh = self.new_fh();
        let handle = FileHandle {
            ino,
            writable,
            opener,
            reader: std::sync::Mutex::new(None),
        };
        self.state().handles.files.insert(fh, Arc::new(handle));
        fh
    }

    /// Create and open a file (open with O_CREAT), owned by `caller`.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, u64)> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        match self.kind_at(&path).await? {
            Some(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
            Some(Kind::Dir) => return Err(Errno::EISDIR),
            Some(_) => {
                let attr = self.lookup(parent, name).await?;
                let fh = self.open(attr.ino, flags, caller).await?;
                let attr = self.getattr(attr.ino).await?;
                return Ok((attr, fh));
            }
            None => {}
        }
        let now = SystemTime::now();
        let meta = self
            .new_entry_meta(parent, Kind::File, mode, caller, now)
            .await?;
        let ino = {
            let mut state = self.state();
            let inode = state.inodes.lookup(&path, Kind::File, now);
            inode.local = true;
            inode.dirty = true;
            inode.size = 0;
            inode.meta = meta;
            inode.ino
        };
        self.entry_changed(&path);
        let (open, _) = self.open_file(ino);
        let staged = {
            let mut of = open.lock().await;
            self.begin_change(ino, &mut of).await.map(|_| ())
        };
        if let Err(e) = staged {
            // Gone before the state is closed, or closing would upload it.
            self.state().inodes.unlink(&path);
            self.entry_changed(&path);
            self.close_file(ino).await;
            return Err(e);
        }
        let fh = self.new_handle(ino, true, caller.process);
        let inode = self.inode(ino)?;
        Ok((self.attr(&inode), fh))
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        self.state()
            .handles
            .files
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let handle = self.handle(fh)?;
        let open = self.open_state(handle.ino).ok_or(Errno::EBADF)?;
        {
            let mut of = open.lock().await;
            if let Some(staged) = &mut of.staged {
                return Ok(staged.read(&self.cache, offset, u64::from(size)).await?);
            }
        }
        let inode = self.inode(handle.ino)?;
        let version = ObjectVersion {
            key: Arc::from(self.key(&inode.path)),
            etag: inode.etag.as_deref().map(Arc::from),
            size: inode.size,
        };
        let reader = {
            let mut slot = handle.reader.lock().unwrap_or_else(|e| e.into_inner());
            match &*slot {
                Some(r) if *r.version() == version => r.clone(),
                _ => {
                    let r = Arc::new(Reader::new(self.cache.clone(), version));
                    *slot = Some(r.clone());
                    r
                }
            }
        };
        Ok(reader.read(offset, size).await?)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        if !handle.writable {
            return Err(Errno::EBADF);
        }
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let data = Bytes::from(data);
        let open = self.open_state(handle.ino).ok_or(Errno::EBADF)?;
        let mut of = open.lock().await;
        let written = match self.begin_change(handle.ino, &mut of).await {
            Ok(staged) => match staged.write(offset, data.clone()).await {
                Ok(()) => Ok(staged.size()),
                // Refused before anything was written: the file is as it was.
                Err(e @ WriteError::Offloaded(_)) => {
                    let key = self.inode(handle.ino).map(|i| self.key(&i.path));
                    tracing::warn!(
                        "{}: write refused until the file is closed: {e}",
                        key.unwrap_or_default()
                    );
                    return Err(Errno(e.errno()));
                }
                Err(e) => Err(Errno::from(e)),
            },
            Err(e) => Err(e),
        };
        match written {
            Ok(size) => {
                self.mark_written(handle.ino, size);
                let changed = offset..offset + u64::from(len);
                self.stream(handle.ino, &mut of, changed, Some(&data)).await;
                Ok(len)
            }
            Err(e) => {
                of.write_error = Some(e);
                Err(e)
            }
        }
    }

    /// Bytes `changed` of a file were written (with `data`) or cut: a new file
    /// past two parts starts (or goes on) sending its parts while it is written.
    async fn stream(&self, ino: u64, of: &mut OpenFile, changed: Range<u64>, data: Option<&[u8]>) {
        let Some(staged) = &of.staged else { return };
        let (size, reader) = (staged.size(), staged.file().reader());
        if of.stream.is_none() {
            let wanted = staged.is_new()
                && size > 2 * FIRST_PART_SIZE
                && !of.upload_failed
                && of.write_error.is_none();
            let Ok(inode) = self.inode(ino) else { return };
            if !wanted || !inode.is_linked() {
                return;
            }
            let key = self.key(&inode.path);
            let mut options = self.put_options(&key, &inode);
            options.metadata = meta::without_times(&options.metadata);
            match self.uploader.start_stream(&key, options).await {
                Ok(stream) => {
                    of.stream = Some(stream);
                    // Noted, so that a later mount aborts it if this file is
                    // never finished.
                    if let Err(e) = self.save_record(&inode, of, false).await {
                        tracing::warn!("{key}: the upload under way is not in the journal ({e:?})");
                    }
                }
                // The file goes up at close instead.
                Err(e) => tracing::debug!("cannot start sending {key} while written: {e}"),
            }
        }
        if let Some(stream) = &mut of.stream {
            self.uploader
                .stream_written(stream, &reader, size, changed, data);
            // (The cheap check first: the free space is a system call.)
            if offload::applies(staged, stream) && self.offload.wanted(size) {
                self.offload(ino, of, &reader).await;
            }
        }
    }

    /// A streamed file offloads (see [`crate::write::offload`]): the parts S3
    /// confirmed leave its staging file, and a writer ahead of the network by
    /// more than the backlog waits for its parts to go.
    async fn offload(&self, ino: u64, of: &mut OpenFile, reader: &StagingReader) {
        loop {
            self.offload_confirmed(ino, of).await;
            let (Some(staged), Some(stream)) = (&of.staged, &mut of.stream) else {
                return;
            };
            // (An upload begun at a close, say of a file changed in place, sends
            // nothing while the file is written: nothing to wait for.)
            if !offload::applies(staged, stream) {
                return;
            }
            let size = staged.size();
            // What was written and is still on disk (holes cost nothing).
            let backlog = staged.bytes_on_disk();
            if backlog <= offload::backlog_limit(stream, PARALLEL_PARTS) {
                return;
            }
            if stream.in_flight() {
                stream.next_done().await;
            } else if stream.failed_parts() == 0 && part_range(stream.next_part()).end < size {
                // Other uploads hold every part slot: wait for one.
                self.uploader.wait_for_part_slot().await;
            } else {
                // Parts failed (S3 unreachable past --retry-for): they go at
                // close, and the writer is not held back meanwhile.
                return;
            }
            self.uploader.send_ready(stream, reader, size);
        }
    }

    /// Offload the parts S3 confirmed: the journal says so (on disk) before
    /// their bytes leave the staging file.
    async fn offload_confirmed(&self, ino: u64, of: &mut OpenFile) {
        let ranges = match (&of.staged, &of.stream, &of.record) {
            (Some(staged), Some(stream), Some(_)) => offload::offloadable(staged, stream),
            _ => return,
        };
        let Ok(inode) = self.inode(ino) else { return };
        if ranges.is_empty() {
            return;
        }
        if let Some(staged) = of.staged.as_mut() {
            staged.mark_offloaded(&ranges);
        }
        if self.save_record(&inode, of, true).await.is_err() {
            if let Some(staged) = of.staged.as_mut() {
                staged.unmark_offloaded(&ranges);
            }
            return;
        }
        let Some(staged) = &of.staged else { return };
        for range in ranges {
            // Bytes that stay are only disk not freed: the journal says they
            // are in S3 either way.
            if let Err(e) = staged.file().punch_hole(range.clone()).await {
                tracing::warn!(
                    "cannot free bytes {}..{} of {}: {e}",
                    range.start,
                    range.end,
                    staged.file().path().display()
                );
            }
        }
    }

    /// Set the size of a file: through its staged view, uploaded at once if no
    /// handle has it open.
    pub(super) async fn truncate(&self, ino: u64, size: u64) -> FsResult<()> {
        match self.inode(ino)?.kind {
            Kind::File => {}
            Kind::Dir => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        self.set_size(ino, size).await
    }

    /// posix_fallocate: make the file at least `offset + len` bytes long.
    pub async fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if !handle.writable {
            return Err(Errno::EBADF);
        }
        if mode & !KEEP_SIZE != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if mode & KEEP_SIZE != 0 || end <= self.inode(handle.ino)?.size {
            return Ok(());
        }
        self.set_size(handle.ino, end).await
    }

    /// Cut or extend the staged view of `ino`; upload at once if the file is not
    /// open (a truncate of a closed file).
    async fn set_size(&self, ino: u64, size: u64) -> FsResult<()> {
        let (open, _) = self.open_file(ino);
        let temporary = !self.has_handles(ino);
        let result = async {
            let mut of = open.lock().await;
            self.begin_change(ino, &mut of).await?.set_len(size).await?;
            self.mark_written(ino, size);
            self.stream(ino, &mut of, size..u64::MAX, None).await;
            if temporary {
                self.upload_locked(ino, &mut of).await?;
                self.uploaded_while_pending(ino, &mut of);
            }
            Ok(())
        }
        .await;
        // The write state was taken here, open or not: given back here (the last
        // user tears it down).
        self.close_file(ino).await;
        result
    }

    /// close() by `process`: upload what was written. The error, if any, is what
    /// close() returns.
    ///
    /// The kernel sends a flush for every close of every copy of the descriptor,
    /// including the copies a child inherits across fork() and closes at exec(). Only
    /// the opener's close uploads, so a program that forks while writing does not
    /// publish its file half-written; the last release uploads what is left.
    ///
    /// A new file that is still empty is left to the last release: a shell's `>`
    /// closes a copy of the descriptor before anything is written.
    pub async fn flush(&self, fh: u64, process: u32) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if handle.opener != process {
            return Ok(());
        }
        let inode = self.inode(handle.ino)?;
        if inode.local && inode.size == 0 && !self.upload_failed(handle.ino).await {
            return Ok(());
        }
        if self.config.background_uploads && handle.writable && self.background_room() {
            let open = self.open_state(handle.ino).ok_or(Errno::EBADF)?;
            let mut of = open.lock().await;
            return self.make_durable(handle.ino, &mut of).await;
        }
        self.fsync(fh).await
    }

    /// May one more file's upload be left to the background? Past a bound, a
    /// close waits for its upload, as without background uploads.
    fn background_room(&self) -> bool {
        self.pending_files
            .load(std::sync::atomic::Ordering::Relaxed)
            < MAX_BACKGROUND_FILES
    }

    /// Did the last upload of `ino` fail (an fsync's)? Then the last release,
    /// which does not try again, must not be left to upload the file.
    async fn upload_failed(&self, ino: u64) -> bool {
        match self.open_state(ino) {
            Some(of) => of.lock().await.upload_failed,
            None => false,
        }
    }

    /// fsync(): upload what was written, whoever asks.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if !handle.writable {
            return Ok(());
        }
        let open = self.open_state(handle.ino).ok_or(Errno::EBADF)?;
        let mut of = open.lock().await;
        self.upload_locked(handle.ino, &mut of).await?;
        self.uploaded_while_pending(handle.ino, &mut of);
        Ok(())
    }

    /// A caller that holds the write state of `ino` (a handle, a truncate)
    /// uploaded it: a pending state gives back its hold, and its task stops.
    fn uploaded_while_pending(&self, ino: u64, of: &mut OpenFile) {
        if of.pending.take().is_none() {
            return;
        }
        self.pending_files
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((n, _)) = self.state().handles.open.get_mut(&ino) {
            *n = n.saturating_sub(1);
        }
    }

    /// The last close of a handle. Data not uploaded yet is uploaded now; data that
    /// failed to upload stays in its staging file.
    pub async fn release(&self, fh: u64) {
        let ino = match self.state().handles.files.remove(&fh) {
            Some(h) => h.ino,
            None => return,
        };
        self.close_file(ino).await;
    }

    /// One user of the write state of `ino` is done; the last one uploads what is
    /// left and tears the state down, or, if the upload fails, keeps the file
    /// pending (see [`Fs::keep_pending`]). The state stays registered until
    /// then, so that an unlink or a rename meanwhile waits for the upload.
    pub(super) async fn close_file(&self, ino: u64) {
        let shared = {
            let mut state = self.state();
            let Some((n, of)) = state.handles.open.get_mut(&ino) else {
                return;
            };
            *n = n.saturating_sub(1);
            if *n > 0 {
                return;
            }
            of.clone()
        };
        let mut of = shared.lock().await;
        if self.unsaved(ino) && of.write_error.is_none() && of.pending.is_none() {
            // After a failed close, the next attempt waits for the backoff.
            let retry_now = !of.upload_failed;
            if self.config.background_uploads
                && self.background_room()
                && self.make_durable(ino, &mut of).await.is_ok()
                && of.record.is_some()
            {
                let delay = if retry_now {
                    Duration::ZERO
                } else {
                    self.config.retry.first
                };
                self.keep_pending(ino, &shared, &mut of, delay);
                return;
            }
            let failed = retry_now && self.upload_locked(ino, &mut of).await.is_err();
            if self.unsaved(ino) && of.record.is_some() && (failed || !retry_now) {
                self.keep_pending(ino, &shared, &mut of, self.config.retry.first);
                return;
            }
        }
        {
            let mut state = self.state();
            match state.handles.open.get(&ino) {
                Some((0, _)) => {
                    state.handles.open.remove(&ino);
                }
                // Opened again meanwhile: the new handle carries on with the state.
                _ => return,
            }
        }
        let linked = self.inode(ino).ok().filter(|i| i.is_linked());
        if let Some(inode) = linked
            .as_ref()
            .filter(|_| of.staged.as_ref().is_some_and(Staged::has_offloaded))
            && let Some(stream) = of.stream.as_mut()
        {
            // Poisoned by a failed write, with bytes only its upload holds: the
            // upload is kept, and the record put aside below names it with all
            // the parts S3 confirmed (those on their way too, once they end).
            while stream.in_flight() {
                stream.next_done().await;
            }
            let (key, id) = (stream.key().to_string(), stream.upload_id().to_string());
            tracing::warn!(
                "{key}: multipart upload {id} holds the bytes of it that left local disk: kept"
            );
            if let Err(e) = self.save_record(inode, &of, true).await {
                tracing::error!("{key}: its record cannot be updated ({e:?})");
            }
            of.stream = None;
        }
        if let Some(stream) = of.stream.take() {
            // Parts sent for a file that is not uploaded after all (unlinked, or
            // poisoned by a failed write).
            self.uploader.abort_stream(stream).await;
        }
        if let Some(staged) = of.staged.take() {
            let inode = self.state().inodes.get(ino).cloned();
            match inode {
                // (Linked now: a conflict at the upload above unlinks the inode,
                // its data stored as the conflict copy.)
                Some(inode) if inode.dirty && inode.is_linked() => {
                    // A write failed: the writer never finished the file.
                    let key = self.key(&inode.path);
                    let name = staged.file().name();
                    drop(staged);
                    self.board.settled(&name);
                    match self.journal.put_aside(&key, &name) {
                        Ok(path) => tracing::warn!(
                            "{key}: not uploaded (a write failed); what was written is in {}",
                            path.display()
                        ),
                        Err(e) => tracing::error!(
                            "{key}: not uploaded (a write failed); what was written stays in {} ({e})",
                            self.staging.path().join(&name).display()
                        ),
                    }
                    // What S3 has is what the file shows from now on.
                    let mut state = self.state();
                    if let Some(inode) = state.inodes.get_mut(ino) {
                        inode.dirty = false;
                        inode.local = false;
                        inode.validated = None;
                    }
                }
                _ => {
                    if of.record.take().is_some() {
                        self.journal.remove(&staged.file().name());
                    }
                    staged.into_file().remove();
                }
            }
        }
        self.state().inodes.remove_if_unreferenced(ino);
    }

    /// Fetch every byte of an open file into its staged view, so that its handles
    /// keep working after the object is deleted or replaced.
    pub(super) async fn keep_open_file(&self, ino: u64) -> FsResult<()> {
        let Some(open) = self.open_state(ino) else {
            return Ok(());
        };
        let mut of = open.lock().await;
        self.keep_locked(ino, &mut of).await
    }

    pub(super) async fn keep_locked(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        let staged = self.ensure_staged(ino, of, false)?;
        let size = staged.size();
        staged.fill(&self.cache, 0..size).await?;
        Ok(())
    }

    /// At unmount: a last attempt for every file that is complete and not in
    /// S3 yet; what still fails stays in the journal for the next mount, and a
    /// file still being written (its writer never closed it) is left to it
    /// too. Block fetches in flight are let reach the disk cache.
    pub async fn shutdown(&self) {
        use futures::StreamExt;
        self.halt();
        let last_attempt = |(ino, of): (u64, SharedOpenFile)| async move {
            let mut of = of.lock().await;
            if of.being_written() {
                if let Ok(inode) = self.inode(ino) {
                    tracing::warn!(
                        "{}: still being written at unmount; not uploaded (the next mount puts its data aside)",
                        self.key(&inode.path)
                    );
                }
                return;
            }
            if self.upload_locked(ino, &mut of).await.is_ok()
                && of.record.is_none()
                && let Some(staged) = of.staged.take()
            {
                staged.into_file().remove();
            }
        };
        // A few at a time: with background uploads, many may be waiting.
        futures::stream::iter(self.open_states())
            .for_each_concurrent(super::write_back::RETRIES_AT_ONCE, last_attempt)
            .await;
        self.write_dir_times().await;
        self.settle().await;
    }
}
