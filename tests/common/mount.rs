//! Small file systems mounted for one test: a tmpfs (to fill up), or an ext2 image through a
//! loop device (no `fallocate`, and an image the test can change under the page cache). Each is
//! unmounted when dropped, panics included. Mounting needs root; without it a test skips with a
//! printed reason.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A file system mounted at `point`, inside its own temporary folder.
pub struct Mount {
    _parent: tempfile::TempDir,
    /// The ext2 image, for an ext2 mount.
    image: Option<PathBuf>,
    pub point: PathBuf,
}

fn need_root(what: &str) -> Result<(), String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!("not running as root, cannot mount a {what}"));
    }
    Ok(())
}

/// Runs a command that must succeed; its stderr is the error otherwise.
fn sh(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Mount {
    /// A tmpfs of `size` (as `mount -o size=` takes it).
    pub fn tmpfs(size: &str) -> Result<Mount, String> {
        need_root("tmpfs")?;
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let point = parent.path().join("mnt");
        std::fs::create_dir(&point).map_err(|e| e.to_string())?;
        sh(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&point),
            "mount -t tmpfs",
        )?;
        Ok(Mount {
            _parent: parent,
            image: None,
            point,
        })
    }

    /// An ext2 image of `size` bytes (4 KiB blocks, the page size) mounted through a loop
    /// device.
    pub fn ext2(size: u64) -> Result<Mount, String> {
        need_root("loop device")?;
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = parent.path().join("ext2.img");
        let point = parent.path().join("mnt");
        std::fs::create_dir(&point).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .map_err(|e| e.to_string())?;
        sh(
            Command::new("mkfs.ext2")
                .args(["-q", "-F", "-b", "4096"])
                .arg(&image),
            "mkfs.ext2",
        )?;
        let fs = Mount {
            _parent: parent,
            image: Some(image),
            point,
        };
        fs.mount_image()?;
        Ok(fs)
    }

    fn mount_image(&self) -> Result<(), String> {
        let image = self.image.as_ref().expect("an ext2 mount");
        sh(
            Command::new("mount")
                .args(["-t", "ext2", "-o", "loop"])
                .arg(image)
                .arg(&self.point),
            "mount -o loop",
        )
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.point
    }

    /// The ext2 image.
    pub fn image(&self) -> &Path {
        self.image.as_deref().expect("an ext2 mount")
    }

    /// Unmounts and mounts the image again: every cached page of the file system is gone, as
    /// after a reboot, and reads come from the image.
    pub fn remount(&self) {
        let out = Command::new("umount")
            .arg(&self.point)
            .output()
            .expect("run umount");
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mount_image().expect("mount again");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file open there: detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// The mount, or `None` after printing why the test is skipped.
pub fn or_skip(m: Result<Mount, String>) -> Option<Mount> {
    match m {
        Ok(m) => Some(m),
        Err(why) => {
            println!("SKIPPED: {why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}
