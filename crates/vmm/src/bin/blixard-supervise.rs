//! The workload supervisor as a binary of its own, for this crate's tests (the `blixard`
//! binary runs the same code as `blixard supervise`). See `blixard_vmm::supervisor`.

fn main() -> std::process::ExitCode {
    let code = blixard_vmm::supervisor::main(std::env::args_os().skip(1).collect());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
