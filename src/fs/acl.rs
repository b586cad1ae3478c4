//! POSIX ACLs, in the binary form the kernel passes as the extended attributes
//! `system.posix_acl_access` and `system.posix_acl_default`.
//!
//! The mount asks for FUSE_POSIX_ACL, so the kernel enforces the ACLs it reads
//! from us; what it leaves to the filesystem is done here, as ext4 does it:
//! keeping the mode in step with the access ACL (both ways) and giving a new
//! entry the default ACL of its directory.

/// The version of the ACL format (`POSIX_ACL_XATTR_VERSION`).
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// An ACL from its extended-attribute value; `None` if it is not one.
    pub fn parse(value: &[u8]) -> Option<Acl> {
        let (header, rest) = value.split_at_checked(4)?;
        if u32::from_le_bytes(header.try_into().ok()?) != VERSION || rest.len() % 8 != 0 {
            return None;
        }
        let entries: Vec<Entry> = rest
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let has = |tag| entries.iter().any(|e| e.tag == tag);
        let known = entries
            .iter()
            .all(|e| [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag));
        (known && has(USER_OBJ) && has(GROUP_OBJ) && has(OTHER)).then_some(Acl { entries })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// Does the ACL say no more than permission bits can?
    pub fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| [USER_OBJ, GROUP_OBJ, OTHER].contains(&e.tag))
    }

    /// The entry that stands for the group class: the mask if there is one.
    fn group_class(&mut self) -> Option<&mut Entry> {
        let tag = if self.entries.iter().any(|e| e.tag == MASK) {
            MASK
        } else {
            GROUP_OBJ
        };
        self.entries.iter_mut().find(|e| e.tag == tag)
    }

    fn perm_of(&self, tag: u16) -> u32 {
        self.entries
            .iter()
            .find(|e| e.tag == tag)
            .map_or(0, |e| u32::from(e.perm & 7))
    }

    /// The permission bits (0o777) the ACL gives the owner, group class and others.
    pub fn mode_bits(&self) -> u32 {
        let mut copy = self.clone();
        let group = copy.group_class().map_or(0, |e| u32::from(e.perm & 7));
        (self.perm_of(USER_OBJ) << 6) | (group << 3) | self.perm_of(OTHER)
    }

    /// A chmod to permission bits `mode`: the owner, group class and other
    /// entries take them (what `posix_acl_chmod` does).
    pub fn chmod(&mut self, mode: u32) {
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        for e in &mut self.entries {
            match e.tag {
                USER_OBJ => e.perm = bits(6),
                OTHER => e.perm = bits(0),
                _ => {}
            }
        }
        if let Some(e) = self.group_class() {
            e.perm = bits(3);
        }
    }

    /// This default ACL as the access ACL of an entry created with permission
    /// bits `mode`: each class keeps only what both allow (`posix_acl_create_masq`).
    /// Returns the entry's permission bits.
    pub fn create_masq(&mut self, mode: u32) -> u32 {
        let allowed = |shift: u32| ((mode >> shift) & 7) as u16;
        for e in &mut self.entries {
            match e.tag {
                USER_OBJ => e.perm &= allowed(6),
                OTHER => e.perm &= allowed(0),
                _ => {}
            }
        }
        if let Some(e) = self.group_class() {
            e.perm &= allowed(3);
        }
        self.mode_bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    const NONE: u32 = u32::MAX;

    #[test]
    fn round_trips_and_refuses_what_is_not_an_acl() {
        let a = acl(&[
            (USER_OBJ, 7, NONE),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, NONE),
            (MASK, 5, NONE),
            (OTHER, 0, NONE),
        ]);
        assert_eq!(Acl::parse(&a.to_bytes()), Some(a.clone()));
        assert_eq!(Acl::parse(b"junk"), None);
        assert_eq!(Acl::parse(&a.to_bytes()[..10]), None);
        let mut wrong_version = a.to_bytes();
        wrong_version[0] = 1;
        assert_eq!(Acl::parse(&wrong_version), None);
        assert!(!a.is_minimal());
        assert_eq!(a.mode_bits(), 0o750);
    }

    #[test]
    fn chmod_sets_the_mask_rather_than_the_owning_group() {
        let mut a = acl(&[
            (USER_OBJ, 7, NONE),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, NONE),
            (MASK, 7, NONE),
            (OTHER, 7, NONE),
        ]);
        a.chmod(0o640);
        assert_eq!(a.mode_bits(), 0o640);
        assert_eq!(a.perm_of(GROUP_OBJ), 7);
        let mut minimal = acl(&[(USER_OBJ, 7, NONE), (GROUP_OBJ, 7, NONE), (OTHER, 7, NONE)]);
        minimal.chmod(0o604);
        assert_eq!(minimal.perm_of(GROUP_OBJ), 0);
        assert!(minimal.is_minimal());
    }

    #[test]
    fn a_default_acl_is_masked_by_the_creation_mode() {
        let mut a = acl(&[
            (USER_OBJ, 7, NONE),
            (GROUP, 7, 100),
            (GROUP_OBJ, 5, NONE),
            (MASK, 7, NONE),
            (OTHER, 5, NONE),
        ]);
        assert_eq!(a.create_masq(0o644), 0o644);
        assert_eq!(a.perm_of(MASK), 4);
        assert_eq!(a.perm_of(GROUP_OBJ), 5);
    }
}
