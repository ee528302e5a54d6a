fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use protoc from the environment when present, else the vendored one, so a fresh machine
    // needs no system package to build.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_build::configure().compile_protos(&["proto/blixard.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/blixard.proto");
    Ok(())
}
