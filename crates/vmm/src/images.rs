//! Host files a VM may be given (kernel, initrd, disk image), and the copy-on-write overlay
//! that keeps a base disk image unwritten.
//!
//! # Only files inside the image directories
//!
//! A client names a kernel, initrd or disk image; the node that runs the VM resolves the name
//! inside its image directories (`blixard node --image-dir DIR`, repeatable; default
//! `DATA_DIR/images` and the default guest's directory) with [`resolve`]:
//!
//! - a relative name is looked up in each directory in turn; an absolute one must lie inside
//!   one of them;
//! - the result is canonicalized (every symlink followed, `..` resolved) and must still lie
//!   inside the canonical directory it was found in, and be a regular file;
//! - every refusal is the same message ([`blixard_core::spec::image_refusal`]), whether the
//!   file is missing, outside, a directory or unreadable: a client learns nothing about which
//!   host files exist.
//!
//! QEMU is then given the canonical path. Whoever can write into an image directory can
//! still swap a file between the check and QEMU's open; image directories are the operator's.
//!
//! # Overlays
//!
//! A disk image is never written. Each VM gets `disk.qcow2` in its run directory, a qcow2
//! overlay whose backing file is the base image (`qemu-img create -f qcow2 -F FMT -b BASE`);
//! the guest's writes go to the overlay, which is removed with the run directory (a new run of
//! the VM, here or on another node, starts from the base image again). A VM created with
//! `--disk-readonly` gets the base image attached read-only instead.

use std::path::{Component, Path, PathBuf};

use crate::DriverError;

/// The overlay's file name in a VM's run directory.
pub const OVERLAY: &str = "disk.qcow2";

/// The image directories of a node: the ones given, or the defaults (`DATA_DIR/images` and
/// the default guest's directory).
pub fn image_dirs(data_dir: &Path, given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        vec![data_dir.join("images"), crate::guest::guest_dir()]
    } else {
        given.to_vec()
    }
}

/// Resolves `name` (a kernel, initrd or disk image, as the client gave it) to the canonical
/// path of a regular file inside one of `dirs`. Every refusal is the same message.
pub fn resolve(what: &str, name: &str, dirs: &[PathBuf]) -> Result<PathBuf, DriverError> {
    let refuse = || DriverError::Refused {
        why: blixard_core::spec::image_refusal(what, name),
    };
    let p = Path::new(name);
    if name.is_empty()
        || name.contains('\0')
        || p.components().any(|c| matches!(c, Component::ParentDir))
    {
        return Err(refuse());
    }
    for dir in dirs {
        let Ok(root) = dir.canonicalize() else {
            continue;
        };
        let candidate = if p.is_absolute() {
            // Must name the directory as given or as canonical.
            if !(p.starts_with(dir) || p.starts_with(&root)) {
                continue;
            }
            p.to_path_buf()
        } else {
            root.join(p)
        };
        let Ok(real) = candidate.canonicalize() else {
            continue;
        };
        if real.starts_with(&root) && real != root && real.is_file() {
            return Ok(real);
        }
    }
    Err(refuse())
}

/// `qcow2` when the file starts with the qcow2 magic, `raw` otherwise (the format is never
/// taken from the name alone: a raw image named `.qcow2` would otherwise be probed).
pub fn probe_format(path: &Path) -> &'static str {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let is_qcow2 = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"QFI\xfb";
    if is_qcow2 {
        "qcow2"
    } else {
        "raw"
    }
}

/// Creates `overlay`, a qcow2 file backed by `base` (format `base_format`), with `qemu_img`.
pub async fn create_overlay(
    qemu_img: &str,
    base: &Path,
    base_format: &str,
    overlay: &Path,
) -> Result<(), DriverError> {
    let out = tokio::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
        .arg(base)
        .arg(overlay)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| DriverError::Spawn {
            program: format!("{qemu_img} (qemu-utils)"),
            source,
        })?;
    if !out.status.success() {
        return Err(DriverError::io(
            "creating the disk overlay",
            overlay,
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_the_directories_resolve_with_one_message() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let images = tmp.path().join("images");
        std::fs::create_dir_all(images.join("sub")).expect("mkdir");
        std::fs::write(images.join("k"), b"k").expect("write");
        std::fs::write(images.join("sub/d.img"), b"d").expect("write");
        std::fs::write(tmp.path().join("secret"), b"s").expect("write");
        std::os::unix::fs::symlink(tmp.path().join("secret"), images.join("out")).expect("ln");
        std::os::unix::fs::symlink(images.join("k"), images.join("in")).expect("ln");
        let dirs = vec![tmp.path().join("missing-dir"), images.clone()];
        let real = images.canonicalize().expect("canonical");
        assert_eq!(resolve("kernel", "k", &dirs).expect("k"), real.join("k"));
        assert_eq!(
            resolve("disk image", "sub/d.img", &dirs).expect("d"),
            real.join("sub/d.img")
        );
        assert_eq!(
            resolve("kernel", &images.join("k").display().to_string(), &dirs).expect("abs"),
            real.join("k")
        );
        assert_eq!(resolve("kernel", "in", &dirs).expect("in"), real.join("k"));
        let refused = |name: &str| {
            resolve("kernel", name, &dirs)
                .expect_err(name)
                .to_string()
                .replace(name, "NAME")
        };
        let secret = tmp.path().join("secret").display().to_string();
        let msgs = [
            refused("nope"),
            refused("../secret"),
            refused("sub/../k"),
            refused("out"),
            refused(&secret),
            refused("/etc/shadow"),
            refused("/etc/no-such-file"),
            refused("sub"),
        ];
        assert_eq!(
            resolve("kernel", "", &dirs).expect_err("empty").to_string(),
            blixard_core::spec::image_refusal("kernel", "")
        );
        for m in &msgs {
            assert_eq!(m, &msgs[0]);
        }
        assert!(msgs[0].contains("image directories"), "{}", msgs[0]);
    }

    #[test]
    fn format_comes_from_the_content() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let q = tmp.path().join("a.img");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").expect("write");
        let r = tmp.path().join("b.qcow2");
        std::fs::write(&r, b"\0\0\0\0").expect("write");
        assert_eq!(probe_format(&q), "qcow2");
        assert_eq!(probe_format(&r), "raw");
    }
}
