//! `canopy validate [DIR]`: check a project without deploying it.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;

/// Check a project's canopy.yaml and the files it names, without deploying.
///
/// Prints `canopy.yaml:LINE:COLUMN: message` for every problem and exits 1,
/// or prints a summary and exits 0. Build commands are not run; their outputs
/// are checked when a push deploys them.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The project directory (the one holding canopy.yaml).
    #[arg(default_value = ".")]
    dir: PathBuf,
}

pub fn run(args: ValidateArgs) -> ExitCode {
    match config::load_dir(&args.dir) {
        Ok(file) => {
            println!("{}", file.summary());
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            println!("{diagnostics}");
            ExitCode::from(1)
        }
    }
}
