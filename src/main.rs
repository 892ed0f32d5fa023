//! `kvmesh`: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kvmesh::cli::Cli::parse();
    match kvmesh::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmesh: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
