//! Files a node keeps for its pods are the owner's only.
//!
//! A node's data dir holds Secret and ConfigMap volumes, container logs, image blobs (any
//! file a pod named as its image) and compiled modules: nothing another user of the machine
//! should read. Directories are made 0700 and files 0600 when they are written, and
//! [`restrict_tree`] takes group and other bits off whatever an older version (or a umask)
//! left behind, when the node starts, as the control plane does for its own dir.
//!
//! Symlinks are never followed: a guest may plant one in its emptyDir pointing anywhere on
//! the host, and changing a mode through it would change the target's.

use std::io;
use std::path::Path;

/// The mode with group and other bits removed, or `None` when it has none to remove.
pub fn private_mode(mode: u32) -> Option<u32> {
    let mode = mode & 0o7777;
    (mode & 0o077 != 0).then_some(mode & !0o077)
}

/// Creates `dir` and any missing parents 0700, and makes `dir` itself 0700 if it existed.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Like [`create_private_dir`], and says whether this call made `dir` (`true`) or found it
/// (`false`, its mode then made 0700). A directory this call made is empty and nobody has
/// seen it yet, so the caller may skip what only an existing one needs (listing it,
/// replacing files by rename): a node making ten thousand pod directories saves a few
/// system calls on each. A new directory is made 0700, which a umask can only narrow.
pub fn create_private_dir_fresh(dir: &Path) -> io::Result<bool> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => create_private_dir(parent)?,
                _ => return Err(e),
            }
            match builder.create(dir) {
                Ok(()) => Ok(true),
                // Made by someone else meanwhile.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    create_private_dir(dir).map(|()| false)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            create_private_dir(dir).map(|()| false)
        }
        Err(e) => Err(e),
    }
}

/// Options that create a file 0600 (the mode applies when the file is created).
pub fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Takes group and other bits off every directory and file under `root` (itself included),
/// without following symlinks. Returns how many modes it changed. Blocking.
pub fn restrict_tree(root: &Path) -> io::Result<usize> {
    let mut changed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed meanwhile (a pod's volume, a rotated log): nothing to protect.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let kind = meta.file_type();
        if !(kind.is_dir() || kind.is_file()) {
            continue; // symlinks, sockets, FIFOs: never touched
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Some(mode) = private_mode(meta.permissions().mode()) {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
                changed += 1;
            }
        }
        if kind.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn private_mode_drops_group_and_other_bits_only() {
        assert_eq!(private_mode(0o40755), Some(0o700));
        assert_eq!(private_mode(0o100644), Some(0o600));
        assert_eq!(private_mode(0o100444), Some(0o400));
        assert_eq!(private_mode(0o100600), None);
        assert_eq!(private_mode(0o40700), None);
    }

    #[test]
    fn restrict_tree_fixes_old_modes_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("node");
        let secret = root.join("pods/uid/volumes/creds");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("token"), "s3cret").unwrap();
        chmod(&root, 0o755);
        chmod(&secret, 0o755);
        chmod(&secret.join("token"), 0o644);
        // A file outside the data dir that a guest's symlink points at keeps its mode.
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "host file").unwrap();
        chmod(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, secret.join("link")).unwrap();

        let changed = restrict_tree(&root).unwrap();
        assert!(changed >= 3, "{changed}");
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&secret), 0o700);
        assert_eq!(mode(&secret.join("token")), 0o600);
        assert_eq!(mode(&outside), 0o644);
        assert_eq!(
            restrict_tree(&root).unwrap(),
            0,
            "a second pass has nothing to do"
        );
    }

    #[test]
    fn private_dirs_and_files_are_the_owners_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let fresh = tmp.path().join("c/d");
        assert!(
            create_private_dir_fresh(&fresh).unwrap(),
            "made, parent too"
        );
        assert_eq!(mode(&tmp.path().join("c")), 0o700);
        assert_eq!(mode(&fresh), 0o700);
        chmod(&fresh, 0o755);
        assert!(!create_private_dir_fresh(&fresh).unwrap(), "found");
        assert_eq!(mode(&fresh), 0o700, "a found directory is made private");
        std::fs::write(tmp.path().join("plain"), "x").unwrap();
        assert!(create_private_dir_fresh(&tmp.path().join("plain")).is_err());
        let file = dir.join("f");
        private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file)
            .unwrap();
        assert_eq!(mode(&file), 0o600);
    }
}
