//! The operation alphabet of the random-operation tests: what a program does to
//! one file, with offsets and lengths that land on the boundaries the data path
//! cares about (the 1 MiB cache block, S3's 5 MiB smallest part, the 8 MiB upload
//! part), and the size classes a file starts in.
//!
//! Positions and lengths are resolved against the file's size when the operation
//! runs, so a sequence stays meaningful when shrinking removes operations before
//! it. The same alphabet drives the test through a real mount (`model_mount.rs`)
//! and the property test of the filesystem core (`model_core.rs`); each runs the
//! operations it can.

use std::fmt;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
/// The block cache's unit of fetching.
pub const BLOCK: u64 = MIB;
/// S3's smallest part.
pub const MIN_PART: u64 = 5 * MIB;
/// The upload part size, and the largest file sent in one PutObject.
pub const PART: u64 = 8 * MIB;

/// A boundary of the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    Page,
    Block,
    MinPart,
    Part,
}

impl Unit {
    pub fn bytes(self) -> u64 {
        match self {
            Unit::Page => 4 * KIB,
            Unit::Block => BLOCK,
            Unit::MinPart => MIN_PART,
            Unit::Part => PART,
        }
    }
}

/// A position in the file, resolved against its current size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum At {
    /// This many 65536ths of the size.
    Frac(u16),
    /// `delta` bytes from the `k`th boundary of `unit` (taken modulo the number of
    /// boundaries up to one past the end, so a position stays near the file).
    Edge { unit: Unit, k: u8, delta: i32 },
    /// `delta` bytes from the end.
    End(i32),
}

impl At {
    pub fn resolve(self, size: u64) -> u64 {
        match self {
            At::Frac(f) => size * u64::from(f) / 65536,
            At::Edge { unit, k, delta } => {
                let unit = unit.bytes();
                let boundaries = size / unit + 2;
                let edge = (u64::from(k) % boundaries) * unit;
                edge.saturating_add_signed(i64::from(delta))
            }
            At::End(delta) => size.saturating_add_signed(i64::from(delta)),
        }
    }
}

/// A length, resolved against where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Len {
    /// Exactly this many bytes.
    Bytes(u32),
    /// Up to `delta` bytes past the next boundary of `unit` after the start.
    ToEdge { unit: Unit, delta: i32 },
}

impl Len {
    pub fn resolve(self, start: u64) -> u64 {
        match self {
            Len::Bytes(n) => u64::from(n),
            Len::ToEdge { unit, delta } => {
                let unit = unit.bytes();
                let next = (start / unit + 1) * unit;
                next.saturating_add_signed(i64::from(delta))
                    .saturating_sub(start)
                    .max(1)
            }
        }
    }
}

/// A fault the in-memory store injects (the core test only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// The next UploadPart fails once (a connection reset); it is sent again.
    PartOnce,
    /// The next GET fails after part of its body (a connection reset).
    GetMidBody,
    /// The next PutObject fails (the server is down): close() reports it.
    PutDown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Close the open handle (if any) and open the file read-write (creating it
    /// if it is gone).
    Open {
        trunc: bool,
        append: bool,
    },
    /// close(): must succeed.
    Close,
    /// pwrite of a pattern made from `seed`; opens the file first if need be.
    Write {
        at: At,
        len: Len,
        seed: u8,
    },
    /// pread, compared.
    Read {
        at: At,
        len: Len,
    },
    /// truncate(2) by path.
    Truncate {
        to: At,
    },
    /// ftruncate(2) on the open handle.
    Ftruncate {
        to: At,
    },
    Fsync,
    /// stat by path (and fstat of the open handle): the sizes are compared.
    Stat,
    /// A second handle opened read-only, read and closed.
    SecondRead {
        at: At,
        len: Len,
    },
    /// A second handle opened write-only with O_TRUNC and closed, while the
    /// first (opened if need be) stays open and goes on.
    SecondTrunc,
    /// A read through a shared mapping of the file.
    MmapRead {
        at: At,
        len: Len,
    },
    /// A write through a shared mapping, then msync.
    MmapWrite {
        at: At,
        len: Len,
        seed: u8,
    },
    /// Drop the kernel's page, dentry and inode caches (the core test forgets
    /// the inodes the kernel would).
    DropCaches,
    /// Close everything, unmount and mount again with the same cache.
    Remount,
    /// Write a temporary file of `len` bytes, close it and rename it over the file.
    RenameOver {
        len: Len,
        seed: u8,
    },
    /// Another S3 client replaces the object (core test; only while the file is
    /// closed, but maybe with changes not uploaded yet: a conflict).
    ExternalPut {
        len: Len,
        seed: u8,
    },
    /// Another S3 client deletes the object (core test; same condition).
    ExternalDelete,
    /// The daemon dies (core test): every in-memory state is dropped, the cache
    /// directory and the bucket stay, and a new mount takes up the journal.
    Crash,
    /// The store injects a fault into its next request of that kind (core test).
    Inject(Fault),
    /// A read whose GET is held until a write to the same place has been made
    /// (core test): the read sees the file before or after the write.
    SlowRead {
        at: At,
        len: Len,
        seed: u8,
    },
    /// Create `n` empty files in the directory beside the file (making it first
    /// if it is gone).
    Fill {
        n: u16,
    },
    /// Read that directory; after `first` entries remove `remove` of its files
    /// (spread from `pick`) and create `create` new ones, then read on to the
    /// end. Every entry that stayed must come exactly once, and nothing may come
    /// that was neither there nor created.
    ReadWhileChanging {
        first: u16,
        remove: u16,
        create: u16,
        pick: u16,
    },
    /// The directory's names, compared.
    ListDir,
    /// Remove the directory and everything in it, reading it while unlinking
    /// as `rm -rf` does.
    RemoveDir,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One JSON object per line: readable, and the replay format.
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

/// How a file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SizeClass {
    /// Under one block.
    Small,
    /// Several blocks, one PutObject.
    Blocks,
    /// Over 16 MiB: multipart, with server-side copies of unchanged parts.
    Large,
    /// An object another S3 client wrote, of any of the sizes above.
    External,
}

impl SizeClass {
    pub const ALL: [SizeClass; 4] = [
        SizeClass::Small,
        SizeClass::Blocks,
        SizeClass::Large,
        SizeClass::External,
    ];

    /// The initial size for a pick `pick` in `0..65536`.
    pub fn size(self, pick: u16) -> u64 {
        let within = |lo: u64, hi: u64| lo + (hi - lo) * u64::from(pick) / 65536;
        match self {
            SizeClass::Small => within(1, BLOCK),
            SizeClass::Blocks => within(BLOCK + 1, PART),
            SizeClass::Large => within(2 * PART + 1, 3 * PART + MIB),
            SizeClass::External => within(0, 2 * PART + MIB),
        }
    }
}

/// One test case: a file of a size class, and what is done to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub class: SizeClass,
    /// Picks the initial size within the class.
    pub size_pick: u16,
    /// Seeds the initial content.
    pub seed: u8,
    pub ops: Vec<Op>,
}

impl Case {
    pub fn initial_size(&self) -> u64 {
        self.class.size(self.size_pick)
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:?} file of {} bytes (seed {}), {} operations:",
            self.class,
            self.initial_size(),
            self.seed,
            self.ops.len()
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {i:3} {op}")?;
        }
        Ok(())
    }
}

/// The bytes a write with `seed` puts at `offset..offset + len`: they depend on the
/// position and the seed, so a misplaced or stale range never matches.
pub fn pattern(seed: u8, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| {
            let x = i
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(u64::from(seed) << 56);
            ((x >> 29) ^ (x >> 47)) as u8 ^ seed
        })
        .collect()
}

/// Which operations a harness runs.
#[derive(Debug, Clone, Copy)]
pub struct Alphabet {
    /// Page-cache operations of a real mount: mmap, dropping caches.
    pub kernel: bool,
    /// Other writers and injected faults of the in-memory store.
    pub store: bool,
    /// A directory beside the file, large enough for several listing pages and
    /// several readdir buffers, read while it changes.
    pub dirs: bool,
}

fn unit() -> impl Strategy<Value = Unit> {
    prop_oneof![
        Just(Unit::Page),
        Just(Unit::Block),
        Just(Unit::MinPart),
        Just(Unit::Part)
    ]
}

fn delta() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => Just(0),
        3 => -4096i32..=4096,
        1 => -70_000i32..=70_000,
    ]
}

pub fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        3 => any::<u16>().prop_map(At::Frac),
        4 => (unit(), 0u8..32, delta()).prop_map(|(unit, k, delta)| At::Edge { unit, k, delta }),
        1 => (-70_000i32..=70_000).prop_map(At::End),
    ]
}

pub fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        4 => (1u32..=64 * 1024).prop_map(Len::Bytes),
        2 => (unit(), delta()).prop_map(|(unit, delta)| Len::ToEdge { unit, delta }),
        1 => (1u32..=(2 * MIB + 4096) as u32).prop_map(Len::Bytes),
    ]
}

/// A size to cut or extend to: mostly within the file, sometimes past its end.
fn to() -> impl Strategy<Value = At> {
    prop_oneof![
        2 => any::<u16>().prop_map(At::Frac),
        2 => (unit(), 0u8..32, delta()).prop_map(|(unit, k, delta)| At::Edge { unit, k, delta }),
        1 => (-70_000i32..=(3 * MIB) as i32).prop_map(At::End),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::PartOnce),
        Just(Fault::GetMidBody),
        Just(Fault::PutDown)
    ]
}

pub fn op(alphabet: Alphabet) -> BoxedStrategy<Op> {
    let mut ops: Vec<(u32, BoxedStrategy<Op>)> = vec![
        (
            6,
            (prop::bool::weighted(0.15), prop::bool::weighted(0.2))
                .prop_map(|(trunc, append)| Op::Open { trunc, append })
                .boxed(),
        ),
        (6, Just(Op::Close).boxed()),
        (
            30,
            (at(), len(), any::<u8>())
                .prop_map(|(at, len, seed)| Op::Write { at, len, seed })
                .boxed(),
        ),
        (
            24,
            (at(), len())
                .prop_map(|(at, len)| Op::Read { at, len })
                .boxed(),
        ),
        (3, to().prop_map(|to| Op::Truncate { to }).boxed()),
        (3, to().prop_map(|to| Op::Ftruncate { to }).boxed()),
        (3, Just(Op::Fsync).boxed()),
        (3, Just(Op::Stat).boxed()),
        (
            3,
            (at(), len())
                .prop_map(|(at, len)| Op::SecondRead { at, len })
                .boxed(),
        ),
        (1, Just(Op::SecondTrunc).boxed()),
        (3, Just(Op::DropCaches).boxed()),
        (1, Just(Op::Remount).boxed()),
        (
            1,
            (len(), any::<u8>())
                .prop_map(|(len, seed)| Op::RenameOver { len, seed })
                .boxed(),
        ),
    ];
    if alphabet.kernel {
        ops.extend([
            (
                2,
                (at(), len())
                    .prop_map(|(at, len)| Op::MmapRead { at, len })
                    .boxed(),
            ),
            (
                2,
                (at(), len(), any::<u8>())
                    .prop_map(|(at, len, seed)| Op::MmapWrite { at, len, seed })
                    .boxed(),
            ),
        ]);
    }
    if alphabet.store {
        ops.extend([
            (
                2,
                (len(), any::<u8>())
                    .prop_map(|(len, seed)| Op::ExternalPut { len, seed })
                    .boxed(),
            ),
            (1, Just(Op::ExternalDelete).boxed()),
            (1, Just(Op::Crash).boxed()),
            (3, fault().prop_map(Op::Inject).boxed()),
            (
                2,
                (at(), len(), any::<u8>())
                    .prop_map(|(at, len, seed)| Op::SlowRead { at, len, seed })
                    .boxed(),
            ),
        ]);
    }
    if alphabet.dirs {
        ops.extend([
            (
                4,
                prop_oneof![3 => 1u16..=40, 1 => 100u16..=400]
                    .prop_map(|n| Op::Fill { n })
                    .boxed(),
            ),
            (
                5,
                (any::<u16>(), count(), count(), any::<u16>())
                    .prop_map(|(first, remove, create, pick)| Op::ReadWhileChanging {
                        first,
                        remove,
                        create,
                        pick,
                    })
                    .boxed(),
            ),
            (2, Just(Op::ListDir).boxed()),
            (1, Just(Op::RemoveDir).boxed()),
        ]);
    }
    proptest::strategy::Union::new_weighted(ops).boxed()
}

/// How many entries a change of the directory removes or creates.
fn count() -> impl Strategy<Value = u16> {
    prop_oneof![1 => Just(0u16), 3 => 1u16..=20, 1 => 100u16..=400]
}

/// Operations between an open and a close, at most: an editor's session.
const SESSION_OPS: usize = 60;

/// One session of work on the file, as an editor or a script does it: open
/// (mostly without O_TRUNC), operations (which may close and reopen it), close,
/// and often a dropped page cache, so the next session finds the file afresh.
fn session(alphabet: Alphabet) -> impl Strategy<Value = Vec<Op>> {
    (
        prop::bool::weighted(0.1),
        prop::collection::vec(op(alphabet), 0..=SESSION_OPS),
        prop::bool::weighted(0.6),
    )
        .prop_map(|(trunc, ops, drop)| {
            let mut all = Vec::with_capacity(ops.len() + 3);
            all.push(Op::Open {
                trunc,
                append: false,
            });
            all.extend(ops);
            all.push(Op::Close);
            if drop {
                all.push(Op::DropCaches);
            }
            all
        })
}

/// Cases of size class `class` with about `max_ops` operations at most, in
/// sessions. With directories, a case starts by filling its directory past one
/// listing page (1,000 keys).
pub fn case(class: SizeClass, alphabet: Alphabet, max_ops: usize) -> impl Strategy<Value = Case> {
    let sessions = (max_ops / (SESSION_OPS / 2 + 3)).max(1);
    (
        any::<u16>(),
        any::<u8>(),
        prop::collection::vec(session(alphabet), 1..=sessions),
        1001u16..=1200,
    )
        .prop_map(move |(size_pick, seed, sessions, fill)| {
            let first = alphabet.dirs.then_some(Op::Fill { n: fill });
            Case {
                class,
                size_pick,
                seed,
                ops: first
                    .into_iter()
                    .chain(sessions.into_iter().flatten())
                    .collect(),
            }
        })
}
