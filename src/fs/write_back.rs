//! Write-back: uploading a changed file, with its journal record kept from the
//! first change until S3 has the object, conditions that keep another writer's
//! version from being replaced silently, retries of failed uploads, and the
//! uploads an earlier run left (resume).
//!
//! A file's record says `Writing` from its first change until its writer closes
//! it (or calls fsync), then `Complete`; only a complete file is uploaded. An
//! upload that fails leaves the file *pending*: it keeps its new content (the
//! table and the staging file have the truth), its record stays, and it is tried
//! again in the background with backoff until S3 has it. An upload replaces the
//! object only if it is still the version the changes were made to; if another
//! writer replaced it meanwhile, both versions are kept (see [`Fs::keep_both`]).

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::inode::{Inode, Kind, parent_of};
use super::meta;
use super::{Change, Errno, Fs, FsResult, OpenFile, SharedOpenFile};
use crate::journal::{FORMAT, PartRecord, Progress, Record, UploadRecord};
use crate::store::{
    Condition, CopyOptions, ObjectHeaders, ObjectMeta, PartTag, PutOptions, StoreError,
};
use crate::write::WriteError;
use crate::write::staged::{Base, Staged};
use crate::write::stream::Stream;
use crate::write::upload::{FIRST_PART_SIZE, Failed, UploadJob, part_ranges};

/// What a file's changes are based on, and how far its writer got.
#[derive(Debug, Clone)]
pub(super) struct RecordState {
    pub progress: Progress,
    /// The ETag of the object the changes were made to; `None`: there was none.
    pub based_on: Option<String>,
}

impl OpenFile {
    /// A program is changing the file (its record says `Writing`).
    pub(super) fn being_written(&self) -> bool {
        self.record
            .as_ref()
            .is_some_and(|r| r.progress == Progress::Writing)
    }
}

/// Whose version wins when another writer changed an object this mount is
/// uploading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Keep both: the other writer's object stays, ours goes beside it as
    /// `NAME.conflict-YYYYMMDD-HHMMSS`, and close() fails with ESTALE.
    #[default]
    Keep,
    /// Last writer wins, without conditions.
    Overwrite,
}

/// How failed uploads are tried again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

/// The background tasks of a mount stop when this says so (unmount, or a test
/// playing a crash).
pub(super) struct Halt {
    tx: watch::Sender<bool>,
}

impl Default for Halt {
    fn default() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }
}

/// How a background retry of a pending file ended.
enum Retried {
    /// Nothing more to do for it.
    Done,
    /// Still pending, after the error the attempt met, if it met one.
    Again(Option<Errno>),
}

/// How one attempt to upload ended, when it did not.
enum Outcome {
    /// S3 has the file.
    Stored,
    /// The attempt failed; the file stays pending.
    Failed(Errno),
    /// Another writer changed the object: settled by keeping both (or putting
    /// ours aside); the file shows theirs.
    Conflict,
    /// The object changed while a multipart upload ran (409): start again.
    Restart,
}

/// How long a mount waits for the aborts of uploads nothing references.
const ABORT_WAIT: Duration = Duration::from_secs(10);

/// Background upload attempts running at once, at most.
pub(super) const RETRIES_AT_ONCE: usize = 8;

/// Attempts after a 409 before the file is left pending.
const RESTARTS: u32 = 3;
/// Conflict copies of one file within one second, at most (then the upload
/// fails and is tried again later, under the next second's name).
const CONFLICT_NAMES: usize = 20;

impl Fs {
    /// The file `ino` is about to change: its record says so (`Writing`) before
    /// anything lands in the staging file, and what the change is based on is
    /// noted at the first change.
    pub(super) async fn begin_change<'a>(
        &self,
        ino: u64,
        of: &'a mut OpenFile,
    ) -> FsResult<&'a mut Staged> {
        let writing = of.being_written();
        if of.staged.is_none() || !writing {
            let inode = self.inode(ino)?;
            self.ensure_staged(ino, of, inode.is_linked())?;
            if inode.is_linked() {
                self.note(&inode, of, Progress::Writing).await?;
            }
        }
        of.staged.as_mut().ok_or(Errno::EIO)
    }

    /// Note `of` (a file at `inode`) in the journal as `progress`, based on the
    /// version it was based on so far, or else on the one the inode knows.
    async fn note(&self, inode: &Inode, of: &mut OpenFile, progress: Progress) -> FsResult<()> {
        let based_on = match &of.record {
            Some(r) => r.based_on.clone(),
            None if inode.local => None,
            None => inode.etag.clone(),
        };
        of.record = Some(RecordState { progress, based_on });
        self.save_record(inode, of, false).await
    }

    /// The journal record of `of` (a file at `inode`), as it stands.
    fn record_of(&self, inode: &Inode, of: &OpenFile) -> Option<Record> {
        let (state, staged) = (of.record.as_ref()?, of.staged.as_ref()?);
        let key = self.key(&inode.path);
        let options = self.put_options(&key, inode);
        Some(Record {
            format: FORMAT,
            bucket: self.config.bucket.clone(),
            key,
            staging: staged.file().name(),
            progress: state.progress,
            based_on: state.based_on.clone(),
            base_len: staged.base_len(),
            local: staged.local_ranges(),
            size: staged.size(),
            offloaded: staged.offloaded().map(|r| (r.start, r.end)).collect(),
            content_type: options.content_type,
            metadata: options.metadata,
            upload: of.stream.as_ref().map(upload_record),
        })
    }

    /// Write the record of `of`; `durable`: on disk when this returns.
    pub(super) async fn save_record(
        &self,
        inode: &Inode,
        of: &OpenFile,
        durable: bool,
    ) -> FsResult<()> {
        let Some(record) = self.record_of(inode, of) else {
            return Ok(());
        };
        // A record naming offloaded bytes is the only map to them: never torn.
        let durable = durable || !record.offloaded.is_empty();
        let journal = self.journal.clone();
        let written = tokio::task::spawn_blocking(move || journal.write(&record, durable))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        written.map_err(|e| {
            tracing::error!(
                "cannot write the journal record of {}: {e}",
                self.key(&inode.path)
            );
            Errno::from(e)
        })
    }

    /// The changes of `of` are no longer wanted (the file was removed or
    /// replaced): its record goes, so that no later mount uploads them.
    pub(super) async fn drop_changes(&self, of: &mut OpenFile) {
        if let Some(staged) = &of.staged {
            self.board.settled(&staged.file().name());
        }
        if of.record.take().is_some()
            && let Some(staged) = &of.staged
        {
            self.journal.remove(&staged.file().name());
        }
        if let Some(stream) = of.stream.take() {
            self.uploader.abort_stream(stream).await;
        }
        self.keep_only(of);
    }

    /// The staging file of `of` no longer holds changes to upload (S3 has
    /// them, or they were kept elsewhere), only what open handles read: named
    /// so, a crash leaves nothing to put aside.
    fn keep_only(&self, of: &mut OpenFile) {
        if let Some(staged) = of.staged.as_mut()
            && let Err(e) = staged.file_mut().mark_kept()
        {
            tracing::debug!("cannot rename {}: {e}", staged.file().path().display());
        }
    }

    /// The condition the upload of `of` must meet, if any.
    fn condition_of(&self, of: &OpenFile) -> Option<Condition> {
        if self.config.on_conflict == OnConflict::Overwrite {
            return None;
        }
        match &of.record.as_ref()?.based_on {
            None => Some(Condition::Absent),
            Some(etag) => Some(Condition::Matches(etag.clone())),
        }
    }

    /// Upload the staged file of a dirty file (its writer is done with it: the
    /// record becomes `Complete` first). On failure the file stays pending, its
    /// record and data on disk, and the error is what close() or fsync()
    /// returns.
    pub(super) async fn upload_locked(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        let inode = self.inode(ino)?;
        if !inode.dirty || !inode.is_linked() {
            return Ok(());
        }
        let key = self.key(&inode.path);
        if let Some(e) = of.write_error {
            if let Some(staged) = &of.staged {
                tracing::error!(
                    "{key}: not uploaded because a write failed ({e:?}); what was written is kept in {}",
                    staged.file().path().display()
                );
            }
            return Err(e);
        }
        self.ensure_staged(ino, of, true)?;
        self.note(&inode, of, Progress::Complete).await?;
        let mut restarts = 0;
        loop {
            match self.attempt(ino, of, &inode, &key).await {
                Outcome::Stored => return Ok(()),
                Outcome::Conflict => return Err(Errno::ESTALE),
                Outcome::Restart if restarts < RESTARTS => {
                    restarts += 1;
                    tracing::warn!(
                        "{key} changed while it was uploaded; starting the upload again"
                    );
                }
                Outcome::Restart => {
                    return Err(self.failed(&inode, of, &StoreError::Conflict.into()).await);
                }
                Outcome::Failed(e) => return Err(e),
            }
        }
    }

    /// Background uploads: the changes of `ino` are made safe on local disk
    /// (its staging file synced, its record `Complete` and synced), so that a
    /// crash leaves the upload to the next mount. A write that failed is
    /// reported as a close without background uploads reports it.
    pub(super) async fn make_durable(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        let inode = self.inode(ino)?;
        if !inode.dirty || !inode.is_linked() {
            return Ok(());
        }
        if of.write_error.is_some() {
            return self.upload_locked(ino, of).await;
        }
        // Complete already, and not changed since (a change makes the record
        // `Writing`): what made it complete made it durable.
        if of
            .record
            .as_ref()
            .is_some_and(|r| r.progress == Progress::Complete)
        {
            return Ok(());
        }
        let staged = self.ensure_staged(ino, of, true)?;
        staged.file().sync().await.map_err(|e| {
            tracing::error!("cannot sync {}: {e}", staged.file().path().display());
            Errno::from(e)
        })?;
        self.note(&inode, of, Progress::Complete).await?;
        self.save_record(&inode, of, true).await
    }

    /// One attempt to upload a complete file.
    async fn attempt(&self, ino: u64, of: &mut OpenFile, inode: &Inode, key: &str) -> Outcome {
        let condition = self.condition_of(of);
        // A server that ignores conditions is asked first; after a failed
        // attempt too, since that one may have stored the file all the same.
        if let Some(condition) = &condition
            && (self.config.check_before_upload || of.upload_failed || of.resumed)
        {
            match self.store.head(key).await {
                Ok(head) if condition.holds_for(head.etag.as_deref()) => {}
                Err(StoreError::NotFound) if condition.holds_for(None) => {}
                Ok(head) => return self.not_the_base(ino, of, inode, key, Some(head)).await,
                Err(StoreError::NotFound) => {
                    return self.not_the_base(ino, of, inode, key, None).await;
                }
                Err(e) => return self.failed_attempt(inode, of, &e.into()).await,
            }
        }
        if let Some(stream) = &mut of.stream {
            match self.uploader.verify(stream).await {
                Ok(true) => {}
                // The upload is gone (completed, or aborted by a lifecycle rule).
                Ok(false) => of.stream = None,
                Err(e) => return self.failed_attempt(inode, of, &e.into()).await,
            }
        }
        let options = self.put_options(key, inode);
        let Some(template) = self.record_of(inode, of) else {
            return Outcome::Failed(Errno::EIO);
        };
        let journal = &self.journal;
        let on_part = move |stream: &Stream| {
            let mut record = template.clone();
            record.upload = Some(upload_record(stream));
            let durable = !record.offloaded.is_empty();
            if let Err(e) = journal.write(&record, durable) {
                tracing::warn!(
                    "cannot note the parts of {} in the journal: {e}",
                    record.key
                );
            }
        };
        let stream = of.stream.take();
        let streamed = stream.as_ref().map(|s| s.options().clone());
        let since = stream
            .as_ref()
            .map_or_else(SystemTime::now, |s| s.created());
        let Some(staged) = of.staged.as_mut() else {
            return Outcome::Failed(Errno::EIO);
        };
        let job = UploadJob {
            key,
            options: &options,
            condition: condition.as_ref(),
            check_before_complete: self.config.check_before_upload,
            on_part: &on_part,
        };
        self.board.upload_begins(key, staged.size());
        let uploaded = self.uploader.upload(job, staged, stream).await;
        self.board.upload_ends(key);
        match uploaded {
            Ok(etag) => {
                match self
                    .stored(ino, of, inode, key, etag, options, streamed, since)
                    .await
                {
                    Ok(()) => Outcome::Stored,
                    Err(e) => Outcome::Failed(e),
                }
            }
            Err(Failed {
                error: WriteError::Store(StoreError::PreconditionFailed),
                stream,
            }) if condition.is_some() => {
                of.stream = stream;
                match self.store.head(key).await {
                    Ok(head) => self.not_the_base(ino, of, inode, key, Some(head)).await,
                    Err(StoreError::NotFound) => self.not_the_base(ino, of, inode, key, None).await,
                    Err(e) => self.failed_attempt(inode, of, &e.into()).await,
                }
            }
            Err(Failed {
                error: WriteError::Store(StoreError::Conflict),
                stream: Some(stream),
            }) if of.staged.as_ref().is_some_and(Staged::has_offloaded) => {
                // The upload that holds the offloaded bytes can never complete.
                of.stream = Some(stream);
                self.keep_both(ino, of, inode, key).await
            }
            Err(Failed {
                error: error @ WriteError::Offloaded(_),
                stream,
            }) => {
                of.stream = stream;
                self.lost_offloaded(ino, of, key, &error);
                Outcome::Failed(Errno(error.errno()))
            }
            Err(Failed {
                error: WriteError::Store(StoreError::Conflict),
                stream,
            }) => {
                if let Some(s) = stream {
                    self.uploader.abort_stream(s).await;
                }
                Outcome::Restart
            }
            Err(Failed { error, stream }) => {
                of.stream = stream;
                self.failed_attempt(inode, of, &error).await
            }
        }
    }

    async fn failed_attempt(&self, inode: &Inode, of: &mut OpenFile, e: &WriteError) -> Outcome {
        Outcome::Failed(self.failed(inode, of, e).await)
    }

    /// An attempt failed: the data and its record go to disk (this is what a
    /// failed close() promises to keep), the file stays pending.
    /// Returns the error for the program.
    async fn failed(&self, inode: &Inode, of: &mut OpenFile, e: &WriteError) -> Errno {
        of.upload_failed = true;
        let key = self.key(&inode.path);
        let id = of
            .staged
            .as_ref()
            .map_or_else(|| key.clone(), |s| s.file().name());
        self.board.failed(
            &id,
            &key,
            &e.to_string(),
            of.staged.as_ref().map(|s| s.file().path()),
        );
        if let Some(staged) = &of.staged {
            if let Err(sync) = staged.file().sync().await {
                tracing::error!("cannot sync {}: {sync}", staged.file().path().display());
            }
            let path = staged.file().path().display();
            tracing::error!(
                "upload of {key} failed: {e}; it will be tried again, and the data is kept in {path}{}",
                if staged.is_complete() {
                    ""
                } else {
                    " (a sparse file: the bytes not written are the object's)"
                }
            );
        }
        if let Err(sync) = self.save_record(inode, of, true).await {
            tracing::error!("{key}: the journal record could not be kept ({sync:?})");
        }
        Errno(e.errno())
    }

    /// S3 has the file as version `etag`: the record goes, the inode takes the
    /// version, and the change is reported.
    #[allow(clippy::too_many_arguments)]
    async fn stored(
        &self,
        ino: u64,
        of: &mut OpenFile,
        inode: &Inode,
        key: &str,
        mut etag: String,
        options: PutOptions,
        streamed: Option<PutOptions>,
        since: SystemTime,
    ) -> FsResult<()> {
        self.published(key, Change::Written { new: inode.local });
        self.board.settled(key);
        let mut written = options;
        if let Some(streamed) = streamed {
            // A multipart upload takes its metadata when it begins; a stream
            // begun while the file was written carries no times. It is right if
            // nothing else changed since, and no time was set.
            let same = streamed.metadata == written.metadata
                || (streamed.metadata == meta::without_times(&written.metadata)
                    && !inode.times_set);
            if same {
                written = streamed;
            } else {
                let copy = CopyOptions {
                    replace: Some(written.clone()),
                    if_match: Some(etag.clone()),
                };
                etag = self.uploader.copy(key, key, inode.size, &copy).await?;
                // What the staged view has not fetched is read from this version.
                if let Some(staged) = of.staged.as_mut() {
                    staged.rebase(key, etag.clone());
                }
            }
        }
        self.settled(of);
        let headers = self.wrote(key, &etag, &written, since);
        let mut state = self.state();
        if let Some(inode) = state.inodes.get_mut(ino) {
            inode.dirty = false;
            inode.local = false;
            inode.times_set = false;
            // The kernel's pages are what was written through it: this version.
            inode.cached_version = Some(etag.clone());
            inode.stored(etag);
            inode.meta = meta::FileMeta::from_metadata(&headers.metadata);
            inode.modified = SystemTime::now();
            inode.headers = Some(headers);
        }
        drop(state);
        self.object_stored(&inode.path);
        tracing::debug!("uploaded {key} ({} bytes)", inode.size);
        Ok(())
    }

    /// The object at `key` (`current`) is not the version the changes were
    /// made to: either an earlier attempt of ours stored them after all (its
    /// answer lost, or the run died before noting it), or another writer
    /// changed the object.
    async fn not_the_base(
        &self,
        ino: u64,
        of: &mut OpenFile,
        inode: &Inode,
        key: &str,
        current: Option<ObjectMeta>,
    ) -> Outcome {
        if let Some(head) = &current {
            match self.is_ours(of, key, head).await {
                Ok(true) => {
                    let etag = head.etag.clone().unwrap_or_default();
                    tracing::info!("{key}: an earlier attempt had stored it");
                    if let Some(stream) = of.stream.take() {
                        // Completed already, or one the bytes were not sent by.
                        self.uploader.abort_stream(stream).await;
                    }
                    let options = self.put_options(key, inode);
                    if let Some(staged) = of.staged.as_mut() {
                        staged.uploaded(key, etag.clone());
                    }
                    return match self
                        .stored(ino, of, inode, key, etag, options, None, SystemTime::now())
                        .await
                    {
                        Ok(()) => Outcome::Stored,
                        Err(e) => Outcome::Failed(e),
                    };
                }
                Ok(false) => {}
                Err(e) => return self.failed_attempt(inode, of, &e).await,
            }
        }
        self.keep_both(ino, of, inode, key).await
    }

    /// Is `head`, the object at `key`, this file's content as an earlier
    /// attempt stored it? For a multipart upload, the ETag its parts give;
    /// for a small file, the bytes themselves.
    async fn is_ours(
        &self,
        of: &mut OpenFile,
        key: &str,
        head: &ObjectMeta,
    ) -> Result<bool, WriteError> {
        let Some(staged) = of.staged.as_mut() else {
            return Ok(false);
        };
        let size = staged.size();
        if head.size != size {
            return Ok(false);
        }
        if let (Some(stream), Some(ranges)) = (&of.stream, part_ranges(size)) {
            let parts: Vec<_> = stream.sent_parts().collect();
            let covers = parts.len() == ranges.len()
                && parts
                    .iter()
                    .zip(&ranges)
                    .all(|(p, r)| p.0 == r.0 && p.1 == r.1);
            if covers {
                let etags: Vec<&str> = parts.iter().map(|p| p.2.etag.as_str()).collect();
                return Ok(crate::store::etag::of_parts(&etags).as_deref() == head.etag.as_deref());
            }
        }
        if size > FIRST_PART_SIZE {
            return Ok(false);
        }
        // Both versions are in memory at once: out of the uploads' budget.
        let _memory = self.uploader.part_memory().await;
        match staged.fill(&self.cache, 0..size).await {
            Ok(()) => {}
            // The bytes not written here went with the base: the object cannot
            // be ours (keep_both puts the changes aside).
            Err(WriteError::Store(StoreError::PreconditionFailed | StoreError::NotFound)) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let ours = staged.file().read_at(0, size as usize).await?;
        if size == 0 {
            return Ok(true);
        }
        let theirs = match self
            .store
            .get_range(key, 0..size, head.etag.as_deref())
            .await
        {
            Ok(body) => body,
            // Changed again since the HEAD: not ours to judge now.
            Err(StoreError::PreconditionFailed | StoreError::NotFound) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        Ok(theirs == ours)
    }

    /// Another writer changed the object at `key` since this mount based its
    /// changes on it. Nothing is lost: their object stays, ours is stored
    /// beside it as `NAME.conflict-YYYYMMDD-HHMMSS` (UTC) with the same
    /// metadata, and the file shows theirs from now on. If the unchanged parts
    /// of ours went with the version they came from (a file changed in place
    /// without being read whole), the bytes written here are put aside in
    /// `recovered/` instead.
    async fn keep_both(&self, ino: u64, of: &mut OpenFile, inode: &Inode, key: &str) -> Outcome {
        if of.staged.as_ref().is_some_and(Staged::has_offloaded) {
            // Offloaded bytes are only in the upload's parts, which can go
            // nowhere but this key: the upload is kept, not aborted.
            let why = "and part of this mount's version is only in the parts of its multipart upload, kept";
            self.put_ours_aside(ino, of, key, why);
            return Outcome::Conflict;
        }
        if let Some(stream) = of.stream.take() {
            self.uploader.abort_stream(stream).await;
        }
        let stamped = conflict_key(key, SystemTime::now());
        let options = self.put_options(key, inode);
        let Some(staged) = of.staged.as_mut() else {
            return Outcome::Failed(Errno::EIO);
        };
        let size = staged.size();
        match staged.fill(&self.cache, 0..size).await {
            Ok(()) => {}
            Err(WriteError::Store(StoreError::PreconditionFailed | StoreError::NotFound)) => {
                let why = "and the unchanged bytes of this mount's version went with the old one";
                self.put_ours_aside(ino, of, key, why);
                return Outcome::Conflict;
            }
            Err(e) => return self.failed_attempt(inode, of, &e).await,
        }
        let absent = Condition::Absent;
        let mut copy_key = stamped.clone();
        for n in 2..=CONFLICT_NAMES + 1 {
            // A name another conflict took (the same second) is never replaced:
            // a server that ignores If-None-Match is asked first.
            if self.config.check_before_upload {
                match self.store.head(&copy_key).await {
                    Ok(_) => {
                        copy_key = format!("{stamped}-{n}");
                        continue;
                    }
                    Err(StoreError::NotFound) => {}
                    Err(e) => return self.failed_attempt(inode, of, &e.into()).await,
                }
            }
            let job = UploadJob {
                key: &copy_key,
                options: &options,
                condition: Some(&absent),
                check_before_complete: self.config.check_before_upload,
                on_part: &|_| {},
            };
            match self.uploader.upload(job, staged, None).await {
                Ok(_) => {
                    tracing::error!(
                        "{key} was changed by another writer after this mount read it: {key} keeps their version, this mount's is saved as {copy_key}"
                    );
                    self.board.conflict(key, copy_key.clone());
                    self.published(&copy_key, Change::Written { new: true });
                    if let Some(path) = copy_key.strip_prefix(self.config.prefix.as_str()) {
                        self.entry_changed(path);
                    }
                    self.settled(of);
                    self.replaced_by_theirs(ino);
                    return Outcome::Conflict;
                }
                Err(Failed {
                    error: WriteError::Store(StoreError::PreconditionFailed),
                    stream,
                }) => {
                    if let Some(s) = stream {
                        self.uploader.abort_stream(s).await;
                    }
                    copy_key = format!("{stamped}-{n}");
                }
                Err(Failed { error, stream }) => {
                    if let Some(s) = stream {
                        self.uploader.abort_stream(s).await;
                    }
                    return self.failed_attempt(inode, of, &error).await;
                }
            }
        }
        let taken = StoreError::Other(format!(
            "{CONFLICT_NAMES} conflict copies of {key} this second"
        ));
        self.failed_attempt(inode, of, &taken.into()).await
    }

    /// Another writer changed `key` and this mount's version cannot be stored
    /// beside it (`why`): the bytes written here (a sparse file) and their
    /// record go to `recovered/`, and the name is theirs.
    fn put_ours_aside(&self, ino: u64, of: &mut OpenFile, key: &str, why: &str) {
        let what = format!(
            "{key} was changed by another writer after this mount began changing it, {why}"
        );
        if let Some(path) = self.put_aside_locked(of, key, &what) {
            self.board.conflict(key, path);
        }
        self.replaced_by_theirs(ino);
    }

    /// The multipart upload that held the offloaded bytes of `of` is gone, or
    /// is not this file's any more (`error`): the file cannot be stored. What
    /// the staging file holds goes to `recovered/`, and the name shows what S3
    /// has.
    fn lost_offloaded(&self, ino: u64, of: &mut OpenFile, key: &str, error: &WriteError) {
        let what = format!(
            "{key} cannot be stored ({error}), and the multipart upload that held those bytes is gone"
        );
        let id = of.staged.as_ref().map(|s| s.file().name());
        if let (Some(path), Some(id)) = (self.put_aside_locked(of, key, &what), id) {
            let kept = std::path::PathBuf::from(path);
            self.board.failed(&id, key, &error.to_string(), Some(&kept));
        }
        self.replaced_by_theirs(ino);
    }

    /// Move the staging file of `of` and its record to `recovered/`, saying
    /// `what` happened; returns where they went.
    fn put_aside_locked(&self, of: &mut OpenFile, key: &str, what: &str) -> Option<String> {
        let staged = of.staged.take()?;
        of.record = None;
        of.stream = None;
        let name = staged.file().name();
        self.board.settled(&name);
        match self.journal.put_aside(key, &name) {
            Ok(path) => {
                tracing::error!(
                    "{what}: the bytes written here are in {} (a sparse file; the record beside it lists their ranges)",
                    path.display()
                );
                Some(path.display().to_string())
            }
            Err(e) => {
                tracing::error!(
                    "{what}: the changes stay in {} ({e})",
                    staged.file().path().display()
                );
                None
            }
        }
    }

    /// S3 has what the file holds (at its key or as a conflict copy): its
    /// record goes, and its staging file only serves handles still open.
    fn settled(&self, of: &mut OpenFile) {
        if let Some(staged) = &of.staged {
            self.journal.remove(&staged.file().name());
            self.board.settled(&staged.file().name());
        }
        of.record = None;
        of.upload_failed = false;
        of.resumed = false;
        self.keep_only(of);
    }

    /// After a conflict: the name is the other writer's (their object, or
    /// nothing if they deleted it), found afresh at the next lookup. The inode
    /// with this mount's version leaves the name, as a file replaced by a
    /// rename does: handles still open on it keep what they had, and nothing of
    /// it is uploaded.
    fn replaced_by_theirs(&self, ino: u64) {
        let path = {
            let mut state = self.state();
            let Some(inode) = state.inodes.get(ino) else {
                return;
            };
            if !inode.is_linked() {
                return;
            }
            let path = inode.path.clone();
            state.inodes.unlink(&path);
            path
        };
        self.entry_changed(&path);
    }

    /// Does `ino` have changes S3 lacks, at a name they are to be uploaded to?
    pub(super) fn unsaved(&self, ino: u64) -> bool {
        self.state()
            .inodes
            .get(ino)
            .is_some_and(|i| i.dirty && i.is_linked())
    }

    /// Keep the file `ino` pending: its upload failed and its writer is gone,
    /// so a background task tries again (after `delay`, then with backoff)
    /// until S3 has it. The pending state holds the file's write state (and so
    /// its inode) like an open handle.
    pub(super) fn keep_pending(
        &self,
        ino: u64,
        shared: &SharedOpenFile,
        of: &mut OpenFile,
        delay: Duration,
    ) {
        if of.pending.is_some() {
            return;
        }
        let generation = self
            .next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        of.pending = Some(generation);
        self.pending_files
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state()
            .handles
            .open
            .entry(ino)
            .or_insert_with(|| (0, shared.clone()))
            .0 += 1;
        let me = self.me.clone();
        let shared = shared.clone();
        let halted = self.halt.tx.subscribe();
        tokio::spawn(retry_loop(me, ino, shared, generation, delay, halted));
    }

    /// One retry of the file pending as `generation`: done once it no longer
    /// needs any (or is pending again since, with a task of its own).
    async fn retry(&self, ino: u64, shared: &SharedOpenFile, generation: u64) -> Retried {
        let mut of = shared.lock().await;
        if of.pending != Some(generation) {
            return Retried::Done;
        }
        let writing = of.being_written();
        let inode = self.inode(ino).ok();
        let was_dirty = self.unsaved(ino);
        let first_attempt = !of.upload_failed;
        let result = if writing || !was_dirty {
            // Open and being changed again: its writer's close uploads it.
            Ok(())
        } else {
            self.upload_locked(ino, &mut of).await
        };
        let still = self.unsaved(ino) && of.record.is_some() && !writing;
        if still {
            return Retried::Again(result.err());
        }
        if result.is_ok()
            && was_dirty
            && !writing
            && let Some(inode) = &inode
        {
            if first_attempt {
                tracing::debug!("uploaded {} in the background", self.key(&inode.path));
            } else {
                tracing::info!("uploaded {} on a retry", self.key(&inode.path));
            }
        }
        of.pending = None;
        self.pending_files
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        drop(of);
        self.close_file(ino).await;
        Retried::Done
    }

    /// Try every pending file once, now (tests; the background tasks do this
    /// with backoff).
    pub async fn retry_pending(&self) {
        for (ino, of) in self.open_states() {
            let generation = of.lock().await.pending;
            if let Some(generation) = generation {
                self.retry(ino, &of, generation).await;
            }
        }
    }

    /// How many files are waiting for an upload that failed.
    pub async fn pending(&self) -> usize {
        let mut n = 0;
        for (_, of) in self.open_states() {
            n += usize::from(of.lock().await.pending.is_some());
        }
        n
    }

    /// The uploads under way (with their sizes), failed and in conflict.
    pub fn board(&self) -> &crate::status::board::Board {
        &self.board
    }

    /// Files whose upload is left to the background: a retry after a failure,
    /// or with background uploads, their first attempt.
    pub fn waiting(&self) -> u64 {
        self.pending_files
            .load(std::sync::atomic::Ordering::Relaxed) as u64
    }

    /// Files with changes S3 lacks: how many, their bytes as last noted, and
    /// how long the oldest has waited.
    pub fn unsaved_changes(&self) -> (u64, u64, Option<Duration>) {
        self.journal.unsaved()
    }

    /// The disk cache's size and limit, and the blocks reads found at hand or
    /// waited for.
    pub fn cache_stats(&self) -> crate::status::CacheStats {
        let (hits, misses) = self.cache.hits_and_misses();
        let disk = self.cache.disk();
        crate::status::CacheStats {
            disk_bytes: disk.as_ref().map_or(0, |d| d.bytes()),
            disk_limit: disk.as_ref().map_or(0, |d| d.max_bytes()),
            hits,
            misses,
        }
    }

    /// Stop every background task of the mount at once (unmount; a test plays
    /// a crash with it and then drops the filesystem).
    pub fn halt(&self) {
        self.halt.tx.send_replace(true);
    }

    /// Wait until no block fetch or header write of this mount is in flight
    /// (what a test playing a crash needs before another mount opens the same
    /// cache directory: a dead process writes nothing more).
    pub async fn settle(&self) {
        self.cache.settle().await;
        self.meta.settle().await;
    }

    /// Take up what the journal of an earlier run holds: complete files are
    /// uploaded in the background (they show their new content meanwhile), the
    /// data of files whose writer never finished is put aside in
    /// `CACHE_DIR/recovered/`, and multipart uploads nothing references any
    /// more are aborted. Returns the number of files resumed.
    pub async fn resume(&self) -> std::io::Result<usize> {
        let journal = self.journal.clone();
        let (bucket, prefix) = (self.config.bucket.clone(), self.config.prefix.clone());
        let recovery = tokio::task::spawn_blocking(move || {
            crate::journal::recover(&journal, &bucket, &prefix)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
        let aborts = recovery
            .abandoned_uploads
            .iter()
            .map(|(key, id)| async move {
                match self.store.abort_multipart(key, id).await {
                    Ok(()) | Err(StoreError::NotFound) => tracing::info!(
                        "aborted the multipart upload {id} of {key}, left by a file not finished"
                    ),
                    Err(e) => {
                        tracing::warn!("cannot abort the multipart upload {id} of {key}: {e}")
                    }
                }
            });
        if tokio::time::timeout(ABORT_WAIT, futures::future::join_all(aborts))
            .await
            .is_err()
        {
            tracing::warn!(
                "multipart uploads of unfinished files not all aborted within {} s; S3 keeps their parts until a lifecycle rule removes them",
                ABORT_WAIT.as_secs()
            );
        }
        let n = recovery.complete.len();
        for record in recovery.complete {
            self.adopt(record);
        }
        Ok(n)
    }

    /// Make the file of a complete record pending, as it was when the earlier
    /// run stopped.
    fn adopt(&self, record: Record) {
        let path = record
            .key
            .strip_prefix(self.config.prefix.as_str())
            .unwrap_or_default()
            .to_string();
        let taken = self.state().inodes.ino_of(&path).is_some();
        if path.is_empty() || path.split('/').any(|s| !super::dir::is_showable(s)) || taken {
            match self.journal.put_aside(&record.key, &record.staging) {
                Ok(to) => tracing::error!(
                    "{}: cannot be uploaded from this mount (another record has the name, or it is no file name); its data is in {}",
                    record.key,
                    to.display()
                ),
                Err(e) => tracing::error!("{}: cannot be resumed nor put aside: {e}", record.key),
            }
            return;
        }
        let file = match self.staging.open(&record.staging) {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(
                    "{}: staging file {} cannot be opened ({e}); it stays with its record",
                    record.key,
                    record.staging
                );
                return;
            }
        };
        let base = (record.base_len > 0).then(|| Base {
            key: record.key.clone(),
            etag: record.based_on.clone(),
            len: record.base_len,
        });
        let mut staged = Staged::restore(file, base, record.size, record.local_ranges());
        staged.mark_offloaded(&record.offloaded_ranges());
        let stream = record.upload.as_ref().map(|u| {
            let options = PutOptions {
                content_type: u.content_type.clone(),
                metadata: u.metadata.clone(),
            };
            let parts = u.parts.iter().map(|p| {
                let tag = PartTag {
                    etag: p.etag.clone(),
                    crc32c: p.crc32c,
                };
                (p.number, p.range(), tag)
            });
            Stream::resumed(u.key.clone(), u.id.clone(), u.crc32c, options, parts)
        });
        let now = SystemTime::now();
        let ino = {
            let mut state = self.state();
            let inode = state.inodes.entry(&path, Kind::File, now);
            inode.dirty = true;
            inode.local = record.based_on.is_none();
            inode.size = record.size;
            inode.etag = record.based_on.clone();
            inode.modified = now;
            inode.meta = meta::FileMeta::from_metadata(&record.metadata);
            inode.headers = Some(ObjectHeaders {
                content_type: record.content_type.clone(),
                metadata: record.metadata.clone(),
            });
            inode.ino
        };
        self.listings().changed(parent_of(&path), &path);
        self.journal.resumed(&record);
        let of = OpenFile {
            staged: Some(staged),
            record: Some(RecordState {
                progress: Progress::Complete,
                based_on: record.based_on.clone(),
            }),
            stream,
            resumed: true,
            ..OpenFile::default()
        };
        let shared: SharedOpenFile = Arc::new(tokio::sync::Mutex::new(of));
        tracing::info!(
            "resuming the upload of {} ({} bytes), left by an earlier run",
            record.key,
            record.size
        );
        // Not locked by anyone yet: it was made just above.
        if let Ok(mut of) = shared.try_lock() {
            self.keep_pending(ino, &shared, &mut of, Duration::ZERO);
        }
    }
}

async fn retry_loop(
    me: Weak<Fs>,
    ino: u64,
    shared: SharedOpenFile,
    generation: u64,
    first: Duration,
    mut halted: watch::Receiver<bool>,
) {
    let mut delay = first;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = halted.wait_for(|h| *h) => return,
        }
        let Some(fs) = me.upgrade() else { return };
        let slot = tokio::select! {
            slot = fs.retry_slots.acquire() => slot,
            _ = halted.wait_for(|h| *h) => return,
        };
        let retried = fs.retry(ino, &shared, generation).await;
        drop(slot);
        let failed = match retried {
            Retried::Done => return,
            Retried::Again(failed) => failed,
        };
        // An I/O error may be an outage (no answer within the retry time): then
        // the next attempt goes as soon as S3 answers again, however long it
        // was away. A server that answers at once failed it otherwise: back off.
        if failed == Some(Errno::EIO) {
            let outage = tokio::select! {
                outage = fs.prober.answered() => outage,
                _ = halted.wait_for(|h| *h) => return,
            };
            if outage {
                if let Ok(inode) = fs.inode(ino) {
                    tracing::info!("{}: S3 answers again; uploading", fs.key(&inode.path));
                }
                delay = Duration::ZERO;
                continue;
            }
        }
        let policy = fs.config.retry;
        delay = if delay.is_zero() {
            policy.first
        } else {
            (delay * 2).min(policy.max)
        };
        if let Ok(inode) = fs.inode(ino) {
            tracing::info!(
                "{}: next upload attempt in {}",
                fs.key(&inode.path),
                humantime::format_duration(delay)
            );
        }
    }
}

/// The journal's view of a multipart upload.
fn upload_record(stream: &Stream) -> UploadRecord {
    UploadRecord {
        key: stream.key().to_string(),
        id: stream.upload_id().to_string(),
        crc32c: stream.crc32c(),
        content_type: stream.options().content_type.clone(),
        metadata: stream.options().metadata.clone(),
        parts: stream
            .sent_parts()
            .map(|(number, range, tag)| PartRecord {
                number,
                etag: tag.etag.clone(),
                crc32c: tag.crc32c,
                start: range.start,
                end: range.end,
            })
            .collect(),
    }
}

/// `dir/NAME.conflict-YYYYMMDD-HHMMSS` for `dir/NAME`, at `now` in UTC (two
/// machines in different time zones name a conflict alike).
pub fn conflict_key(key: &str, now: SystemTime) -> String {
    let time: chrono::DateTime<chrono::Utc> = now.into();
    format!("{key}.conflict-{}", time.format("%Y%m%d-%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_copies_are_named_beside_the_file_in_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_676_800 + 123);
        assert_eq!(
            conflict_key("site/style.css", t),
            "site/style.css.conflict-20251202-120203"
        );
    }
}
