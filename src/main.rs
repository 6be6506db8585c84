//! The `walship` command line.

mod cli;
mod tools;

fn main() -> std::process::ExitCode {
    // Test builds only: failpoints named in the FAILPOINTS environment variable (see faults.rs).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    cli::main()
}
