//! Names the commit s3mount is built from in `s3mount --version`.

use vergen_gitcl::{Emitter, GitclBuilder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `git describe --always --dirty`: the commit, and whether the tree had changes.
    let git = GitclBuilder::default()
        .describe(false, true, None)
        .build()?;
    // Outside a git checkout (a source tarball) this warns and names no commit.
    Emitter::default().add_instructions(&git)?.emit()?;
    Ok(())
}
