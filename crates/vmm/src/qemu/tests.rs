use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn paths() -> QemuPaths {
    QemuPaths::in_dir(Path::new("/run/blixard/vm1"))
}

#[test]
fn argv_kernel_initrd_tcg() {
    let mut cfg = VmConfig::new("vm1");
    cfg.vcpus = 2;
    cfg.memory_mb = 256;
    cfg.kernel = Some("/g/vmlinuz".into());
    cfg.initrd = Some("/g/initrd.cpio".into());
    assert_eq!(
        build_argv(&cfg, &paths(), Accel::Tcg),
        s(&[
            "-name",
            "vm1",
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=on",
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-m",
            "256M",
            "-smp",
            "2",
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
            "-qmp",
            "unix:/run/blixard/vm1/qmp.sock,server=on,wait=off",
            "-kernel",
            "/g/vmlinuz",
            "-initrd",
            "/g/initrd.cpio",
            "-append",
            "console=ttyS0 panic=-1 tsc_early_khz=1000000",
        ])
    );
}

#[test]
fn argv_kvm_disk_cmdline() {
    let mut cfg = VmConfig::new("db");
    cfg.kernel = Some("/g/vmlinuz".into());
    cfg.cmdline = Some(" root=/dev/vda rw ".into());
    cfg.disk_image = Some("/img/root,1.qcow2".into());
    assert_eq!(
        build_argv(&cfg, &QemuPaths::in_dir(Path::new("/r/db")), Accel::Kvm),
        s(&[
            "-name",
            "db",
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=on",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-m",
            "128M",
            "-smp",
            "1",
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
            "-qmp",
            "unix:/r/db/qmp.sock,server=on,wait=off",
            "-kernel",
            "/g/vmlinuz",
            "-append",
            "console=ttyS0 panic=-1 root=/dev/vda rw",
            "-drive",
            "id=disk0,if=none,format=qcow2,file=/img/root,,1.qcow2",
            "-device",
            "virtio-blk-device,drive=disk0",
        ])
    );
}

#[test]
fn argv_readonly_disk() {
    let mut cfg = VmConfig::new("ro");
    cfg.disk_image = Some("/img/base.img".into());
    cfg.disk_readonly = true;
    let argv = build_argv(&cfg, &QemuPaths::in_dir(Path::new("/r/ro")), Accel::Tcg);
    assert!(
        argv.contains(&"id=disk0,if=none,format=raw,file=/img/base.img,readonly=on".to_string())
    );
}

#[test]
fn argv_raw_disk_without_kernel() {
    let mut cfg = VmConfig::new("raw");
    cfg.disk_image = Some("/img/disk.img".into());
    let argv = build_argv(&cfg, &QemuPaths::in_dir(Path::new("/r/raw")), Accel::Tcg);
    assert!(!argv.iter().any(|a| a == "-kernel" || a == "-append"));
    assert_eq!(
        argv[argv.len() - 4..],
        s(&[
            "-drive",
            "id=disk0,if=none,format=raw,file=/img/disk.img",
            "-device",
            "virtio-blk-device,drive=disk0"
        ])
    );
}

#[test]
fn argv_network_interface_on_a_tap() {
    let mut cfg = VmConfig::new("web");
    cfg.kernel = Some("/g/vmlinuz".into());
    cfg.net = Some(crate::NetAttachment {
        tap: "bx1a2bt0a0b0c0d".into(),
        mac: "02:b1:0a:58:00:05".into(),
    });
    let argv = build_argv(&cfg, &QemuPaths::in_dir(Path::new("/r/web")), Accel::Tcg);
    assert_eq!(
        argv[argv.len() - 4..],
        s(&[
            "-netdev",
            "tap,id=net0,ifname=bx1a2bt0a0b0c0d,script=no,downscript=no",
            "-device",
            "virtio-net-device,netdev=net0,mac=02:b1:0a:58:00:05"
        ])
    );
    let driver = QemuDriver::new("/r").with_accel(Accel::Tcg);
    cfg.net = Some(crate::NetAttachment {
        tap: "x".repeat(16),
        mac: "02:b1:0a:58:00:05".into(),
    });
    let err = driver.validate(&cfg).expect_err("long tap name");
    assert!(err.to_string().contains("bad network attachment"), "{err}");
}

#[test]
fn accel_needs_flags_and_device() {
    let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
    let amd = "processor\t: 0\nflags\t\t: fpu svm sse2\n";
    let none = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n";
    let lookalike = "processor\t: 0\nflags\t\t: vmxx svm_lock\nmodel name\t: vmx svm\n";
    assert_eq!(choose_accel(intel, true), Accel::Kvm);
    assert_eq!(choose_accel(amd, true), Accel::Kvm);
    assert_eq!(choose_accel(intel, false), Accel::Tcg);
    assert_eq!(choose_accel(none, true), Accel::Tcg);
    assert_eq!(choose_accel(lookalike, true), Accel::Tcg);
    assert_eq!(choose_accel("", true), Accel::Tcg);
}

#[test]
fn validate_names_missing_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = QemuDriver::new(dir.path()).with_accel(Accel::Tcg);
    let mut cfg = VmConfig::new("v");
    assert!(matches!(
        driver.validate(&cfg),
        Err(DriverError::InvalidConfig { .. })
    ));
    cfg.kernel = Some(dir.path().join("no-such-kernel"));
    let err = driver.validate(&cfg).expect_err("missing kernel");
    assert!(err.to_string().contains("no-such-kernel"), "{err}");
    let kernel = dir.path().join("k");
    std::fs::write(&kernel, b"k").expect("write");
    cfg.kernel = Some(kernel);
    cfg.initrd = Some(dir.path().join("no-such-initrd"));
    let err = driver.validate(&cfg).expect_err("missing initrd");
    assert!(
        err.to_string().contains("initrd not found at")
            && err.to_string().contains("no-such-initrd"),
        "{err}"
    );
}
