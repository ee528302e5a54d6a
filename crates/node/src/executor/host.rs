//! What the executor needs from the host to start a VM: the driver named in the
//! configuration, the VM's driver configuration built from its spec, and host files (kernel,
//! initrd, disk images) resolved to paths.

use super::*;

impl Executor {
    pub(super) fn vm_config(&self, spec: &VmSpec) -> Result<VmConfig, NodeError> {
        let mut cfg = VmConfig::new(spec.name.clone());
        cfg.vcpus = spec.vcpus;
        cfg.memory_mb = spec.memory_mb;
        cfg.cmdline = spec.cmdline.clone();
        cfg.kernel = spec.kernel.as_ref().map(PathBuf::from);
        cfg.initrd = spec.initrd.as_ref().map(PathBuf::from);
        cfg.disk_image = spec.disk_image.as_ref().map(PathBuf::from);
        if self.driver.kind() == "qemu" && cfg.kernel.is_none() {
            let (k, i) = self.default_guest()?;
            cfg.kernel = Some(k);
            if cfg.initrd.is_none() {
                cfg.initrd = Some(i);
            }
        }
        Ok(cfg)
    }

    /// The kernel, initrd and disk image the spec names, resolved inside this node's image
    /// directories (see `blixard_vmm::images`); the default guest is the node's own choice.
    pub(super) fn resolve_host_files(
        &self,
        spec: &VmSpec,
        cfg: &mut VmConfig,
    ) -> Result<(), DriverError> {
        let dirs = blixard_vmm::images::image_dirs(
            &self.node.config.data_dir,
            &self.node.config.image_dirs,
        );
        let resolve = |what: &str, p: &Option<String>| {
            p.as_deref()
                .map(|p| blixard_vmm::images::resolve(what, p, &dirs))
                .transpose()
        };
        if let Some(k) = resolve("kernel", &spec.kernel)? {
            cfg.kernel = Some(k);
        }
        if let Some(i) = resolve("initrd", &spec.initrd)? {
            cfg.initrd = Some(i);
        }
        cfg.disk_image = resolve("disk image", &spec.disk_image)?;
        cfg.disk_readonly = spec.disk_readonly;
        Ok(())
    }

    pub(super) fn default_guest(&self) -> Result<(PathBuf, PathBuf), NodeError> {
        let mut g = self.default_guest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.as_ref() {
            return Ok(v.clone());
        }
        let v = blixard_vmm::guest::default_guest(&blixard_vmm::guest::guest_dir())
            .map_err(|e| NodeError::Config(e.to_string()))?;
        *g = Some(v.clone());
        Ok(v)
    }
}

/// Builds the driver named in the configuration.
pub fn make_driver(
    kind: &str,
    run_root: PathBuf,
    lease_file: &std::path::Path,
) -> Result<Arc<dyn VmDriver>, NodeError> {
    let lease = lease_file.display().to_string();
    match kind {
        "process" => {
            let exe = std::env::current_exe()
                .map_err(|e| NodeError::Config(format!("cannot find own executable: {e}")))?;
            let argv = vec![exe.display().to_string(), "__workload".to_string()];
            let mut d = blixard_vmm::ProcessDriver::new(run_root, argv)
                .with_env(blixard_vmm::LEASE_FILE_ENV, lease);
            if let Ok(f) = std::env::var(blixard_vmm::EVENTS_FILE_ENV) {
                d = d.with_env(blixard_vmm::EVENTS_FILE_ENV, f);
            }
            Ok(Arc::new(d))
        }
        "qemu" => {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
                .unwrap_or(false);
            if !found {
                return Err(NodeError::Config(
                    "qemu-system-x86_64 not found: run scripts/setup.sh (as root) or start with --driver process".into(),
                ));
            }
            Ok(Arc::new(
                blixard_vmm::QemuDriver::new(run_root).with_env(blixard_vmm::LEASE_FILE_ENV, lease),
            ))
        }
        other => Err(NodeError::Config(format!(
            "unknown driver '{other}': use qemu or process"
        ))),
    }
}
