//! `cargo xtask`: the project's build tasks that cargo has no command for (the alias is in
//! `.cargo/config.toml`).
//!
//! - `cargo xtask install --prefix DIR [--profile NAME]` builds `librsl` (release unless
//!   `--profile` names another cargo profile) and installs it under `DIR` ([`install`]).
//! - `cargo xtask test-install [--profile NAME]` installs into a temporary prefix, builds and
//!   runs the C++ example with CMake and the C example with pkg-config against the installed
//!   copy, and shows that nothing came from the checkout ([`check`]).

mod check;
mod install;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  cargo xtask install --prefix DIR [--profile NAME]   build librsl and install it under DIR
  cargo xtask test-install [--profile NAME]           install into a temporary prefix and build
                                                      and run the C and C++ examples against it
--profile: the cargo profile to build and install (default: release)";

/// A parsed command line.
enum Task {
    Install { prefix: PathBuf, profile: String },
    TestInstall { profile: String },
}

fn parse(args: &[String]) -> Result<Task, String> {
    let (task, rest) = args.split_first().ok_or("no task given")?;
    let mut prefix = None;
    let mut profile = "release".to_string();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--prefix" => prefix = Some(PathBuf::from(value()?)),
            "--profile" => profile = value()?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    match task.as_str() {
        "install" => Ok(Task::Install { prefix: prefix.ok_or("install needs --prefix DIR")?, profile }),
        "test-install" if prefix.is_none() => Ok(Task::TestInstall { profile }),
        "test-install" => Err("test-install picks its own prefix".into()),
        other => Err(format!("unknown task `{other}`")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match parse(&args) {
        Ok(Task::Install { prefix, profile }) => install::run(&prefix, &profile).map(|_| ()),
        Ok(Task::TestInstall { profile }) => check::run(&profile),
        Err(e) => Err(format!("{e}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn install_needs_a_prefix_and_defaults_to_release() {
        let Ok(Task::Install { prefix, profile }) = parse(&args("install --prefix /opt/rsl")) else { panic!("parses") };
        assert_eq!((prefix, profile.as_str()), (PathBuf::from("/opt/rsl"), "release"));
        assert!(parse(&args("install")).is_err_and(|e| e.contains("--prefix")));
        assert!(parse(&args("install --prefix")).is_err_and(|e| e.contains("needs a value")));
    }

    #[test]
    fn test_install_takes_a_profile_only() {
        let Ok(Task::TestInstall { profile }) = parse(&args("test-install --profile dev")) else { panic!("parses") };
        assert_eq!(profile, "dev");
        assert!(parse(&args("test-install --prefix /x")).is_err());
        assert!(parse(&args("uninstall")).is_err_and(|e| e.contains("unknown task")));
        assert!(parse(&args("install --prefix /x --strip")).is_err_and(|e| e.contains("--strip")));
    }
}
