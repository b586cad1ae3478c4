//! The source tree of W9 and W10: DIRS directories of FILES files each, of sizes
//! drawn from a fixed seed (the same tree every time) and bodies drawn from
//! another seed (new data each time, as Garage skips storing blocks it has).

use std::path::{Path, PathBuf};

use crate::splitmix64;

/// The shape of the tree.
pub struct Shape {
    pub dirs: u64,
    pub files: u64,
    pub min_size: u64,
    pub max_size: u64,
    pub seed: u64,
}

/// Write the tree into `root` (which must not hold one already): `root/dNNN/fNN.c`.
pub fn write(root: &Path, shape: &Shape, content_seed: u64) -> Result<String, String> {
    if shape.min_size > shape.max_size {
        return Err("--min-size is above --max-size".into());
    }
    let span = shape.max_size - shape.min_size + 1;
    let mut sizes = shape.seed;
    let mut content = content_seed;
    let (mut files, mut bytes) = (0u64, 0u64);
    for d in 0..shape.dirs {
        let dir = root.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for f in 0..shape.files {
            let size = shape.min_size + splitmix64(&mut sizes) % span;
            let mut data: Vec<u8> = (0..size.div_ceil(8))
                .flat_map(|_| splitmix64(&mut content).to_le_bytes())
                .collect();
            data.truncate(usize::try_from(size).map_err(|e| e.to_string())?);
            let path = dir.join(format!("f{f:02}.c"));
            std::fs::write(&path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
            files += 1;
            bytes += size;
        }
    }
    Ok(format!("files={files} bytes={bytes}"))
}

/// Every regular file under `root`, with its path relative to `root` ('/'-separated),
/// in name order.
pub fn files(root: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .map_err(|e| e.to_string())?
                    .to_str()
                    .ok_or_else(|| format!("{}: not UTF-8", path.display()))?
                    .to_string();
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// A seed that differs from run to run: the clock and the process id.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut state = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    splitmix64(&mut state)
}
