//! mount(8)'s syntax: `s3mount BUCKET[:PREFIX] DIR -o opt[=value],...`, as
//! `mount.fuse3` runs it for `mount -t fuse.s3mount` and a line in /etc/fstab, and
//! the same under the name `mount.fuse.s3mount`, the helper mount(8) looks for
//! first (with mount(8)'s own flags `-f` fake, `-n`, `-s` sloppy, `-v`).
//!
//! Every long option of the command line is also a mount option, with `-` or `_`
//! between words (`cache-size=10GiB`, `allow_other`); the generic options of
//! mount(8) and fstab are accepted and ignored, but for `ro`.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// The arguments for the command-line parser, and whether mount(8) asked for a
/// fake mount (check everything, mount nothing).
#[derive(Debug, PartialEq, Eq)]
pub struct CommandLine {
    pub args: Vec<OsString>,
    pub fake: bool,
}

/// Options of mount(8), fstab, systemd and FUSE that need nothing of s3mount: the
/// mount is always nosuid, nodev and noatime, and checks permissions in the kernel.
const IGNORED: &[&str] = &[
    "defaults",
    "rw",
    "async",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "exec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "default_permissions",
];

/// Options ignored with whatever value they carry.
const IGNORED_WITH_VALUE: &[&str] = &["comment", "fsname", "subtype"];

/// Rewrite mount(8)'s syntax into the plain command line; anything else comes back
/// unchanged. `options` is the parser's description of the long options.
pub fn command_line(args: Vec<OsString>, options: &clap::Command) -> Result<CommandLine, String> {
    let helper = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(OsStr::to_str)
        .is_some_and(|name| name.starts_with("mount."));
    let mut out = Vec::with_capacity(args.len());
    let mut option_lists = Vec::new();
    let (mut fake, mut sloppy) = (false, false);
    let mut rest = args.into_iter();
    if let Some(program) = rest.next() {
        out.push(program);
    }
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("--") => {
                out.push(arg);
                out.extend(rest.by_ref());
            }
            Some("-o") => {
                let list = rest.next().ok_or("-o needs a list of mount options")?;
                let list = list
                    .into_string()
                    .map_err(|l| format!("mount options {l:?} are not UTF-8"))?;
                option_lists.push(list);
            }
            Some(a) if a.starts_with("-o") => option_lists.push(a[2..].to_string()),
            Some("-f") if helper => fake = true,
            Some("-s") if helper => sloppy = true,
            Some("-n" | "-v") if helper => {}
            // The type (fuse.s3mount) is what brought mount(8) here.
            Some("-t") if helper => {
                rest.next();
            }
            _ => out.push(arg),
        }
    }
    for list in &option_lists {
        for option in list.split(',').filter(|o| !o.is_empty()) {
            out.extend(translate(option, options, sloppy)?);
        }
    }
    Ok(CommandLine { args: out, fake })
}

/// The command-line arguments of one mount option.
fn translate(option: &str, options: &clap::Command, sloppy: bool) -> Result<Vec<OsString>, String> {
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    if name == "ro" && value.is_none() {
        return Ok(vec!["--read-only".into()]);
    }
    // fuse2's and s3fs's name for it.
    if name == "nonempty" && value.is_none() {
        return Ok(vec!["--allow-nonempty".into()]);
    }
    if (IGNORED.contains(&name) && value.is_none())
        || IGNORED_WITH_VALUE.contains(&name)
        || name.starts_with("x-")
    {
        return Ok(Vec::new());
    }
    let long = name.replace('_', "-");
    let known = options
        .get_arguments()
        .find(|a| !a.is_positional() && a.get_long() == Some(long.as_str()));
    let Some(arg) = known else {
        return if sloppy {
            Ok(Vec::new())
        } else {
            Err(format!("unknown mount option {name:?}"))
        };
    };
    let takes_value = arg.get_action().takes_values();
    match (takes_value, value) {
        (true, Some(v)) => Ok(vec![format!("--{long}").into(), v.into()]),
        (true, None) => Err(format!("mount option {name:?} needs a value: {name}=...")),
        (false, None) => Ok(vec![format!("--{long}").into()]),
        (false, Some(_)) => Err(format!("mount option {name:?} takes no value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::{CommandFactory, Parser};

    fn line(args: &[&str]) -> Result<CommandLine, String> {
        command_line(args.iter().map(OsString::from).collect(), &Cli::command())
    }

    fn parsed(args: &[&str]) -> Cli {
        let line = line(args).unwrap();
        Cli::try_parse_from(line.args).unwrap()
    }

    #[test]
    fn a_plain_command_line_is_left_alone() {
        let args = ["s3mount", "b", "/mnt", "-f", "--cache-size", "1GiB"];
        let out = line(&args).unwrap();
        assert_eq!(out.args, args.map(OsString::from));
        assert!(!out.fake);
    }

    #[test]
    fn mount_options_become_long_options() {
        let cli = parsed(&[
            "s3mount",
            "b:site",
            "/mnt",
            "-o",
            "rw,noatime,cache-size=10GiB,allow_other,endpoint_url=http://h:3900,uid=7,dev,suid",
        ]);
        assert_eq!(cli.source, "b:site");
        assert_eq!(cli.cache_size, 10 << 30);
        assert!(cli.allow_other);
        assert_eq!(cli.endpoint_url.as_deref(), Some("http://h:3900"));
        assert_eq!(cli.uid, Some(7));
        assert!(!cli.read_only);
        assert!(!cli.foreground);
    }

    #[test]
    fn fstab_and_systemd_options_are_ignored_and_ro_is_read_only() {
        let cli = parsed(&[
            "s3mount",
            "b",
            "/mnt",
            "-o",
            "defaults,_netdev,nofail,noauto,user,x-systemd.automount,x-systemd.idle-timeout=60,comment=x",
            "-oro",
        ]);
        assert!(cli.read_only);
    }

    #[test]
    fn the_helper_name_takes_mount_flags() {
        let out = line(&[
            "/sbin/mount.fuse.s3mount",
            "b",
            "/mnt",
            "-n",
            "-v",
            "-f",
            "-o",
            "foreground,ro",
            "-t",
            "fuse.s3mount",
        ])
        .unwrap();
        assert!(out.fake);
        let cli = Cli::try_parse_from(out.args).unwrap();
        assert!(cli.foreground && cli.read_only);
    }

    #[test]
    fn bad_options_are_one_clear_line() {
        let err = |args: &[&str]| line(args).unwrap_err();
        assert_eq!(
            err(&["s3mount", "b", "/m", "-o", "cache-sise=1GiB"]),
            "unknown mount option \"cache-sise\""
        );
        assert_eq!(
            err(&["s3mount", "b", "/m", "-o", "cache-size"]),
            "mount option \"cache-size\" needs a value: cache-size=..."
        );
        assert_eq!(
            err(&["s3mount", "b", "/m", "-o", "read-only=yes"]),
            "mount option \"read-only\" takes no value"
        );
        assert_eq!(
            err(&["s3mount", "b", "/m", "-o"]),
            "-o needs a list of mount options"
        );
        // A value the option cannot take is the parser's error, as on the command line.
        let bad = line(&["s3mount", "b", "/m", "-o", "cache-size=lots"]).unwrap();
        assert!(Cli::try_parse_from(bad.args).is_err());
    }

    #[test]
    fn sloppy_mounts_ignore_unknown_options() {
        let out = line(&["mount.fuse.s3mount", "b", "/m", "-s", "-o", "bogus,ro"]).unwrap();
        assert!(Cli::try_parse_from(out.args).unwrap().read_only);
    }
}
