//! What humans forget: every command-line flag is documented in the README, every source module
//! is on the ARCHITECTURE.md map, and every exit code is in the README's table. (That every unit
//! file in `systemd/` is booted is checked next to the boots, in `systemd/units.rs`.)

use std::path::Path;

use crate::support::*;

fn repo(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Long flags (`--name`) of the option lines of `--help` output (those that start with `-`).
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| l.split_whitespace().take(3))
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches([',', '.', ':']).split(['=', '<', '[']).next().unwrap_or("").to_string())
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect()
}

#[test]
fn every_flag_of_every_subcommand_is_in_the_readme() {
    let readme = repo("README.md");
    for sub in [&[][..], &["stop"], &["status"]] {
        let mut args: Vec<&str> = sub.to_vec();
        args.push("--help");
        let out = TestCommand::conjure(&args).expect_success();
        let flags = long_flags(&out.stdout);
        assert!(flags.len() >= 2, "no flags found in\n{out}");
        for flag in flags {
            if flag == "help" || flag == "version" {
                continue;
            }
            assert!(readme.contains(&format!("--{flag}")), "README.md does not document `--{flag}` ({sub:?})");
        }
    }
}

#[test]
fn every_source_module_is_on_the_architecture_map() {
    let map = repo("ARCHITECTURE.md");
    for dir in ["src", "src/daemon", "src/process", "src/sys", "src/readiness"] {
        for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).expect("src") {
            let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
            if name.ends_with(".rs") {
                let shown = format!("{dir}/{name}");
                let in_group = map.contains(&format!("{dir}/")) && map.contains(&format!("`{name}`"));
                assert!(map.contains(&shown) || in_group, "ARCHITECTURE.md does not map {shown}");
            }
        }
    }
}

#[test]
fn every_exit_code_is_in_the_readme_and_the_help() {
    let readme = repo("README.md");
    let help = TestCommand::conjure(["--help"]).expect_success().stdout;
    for code in [64, 66, 67, 69, 70, 71, 73, 75, 77] {
        assert!(readme.contains(&format!("| {code} |")), "README.md's exit-code table lacks {code}");
        assert!(help.contains(&format!("  {code}  ")), "--help's exit-code list lacks {code}");
    }
}

/// The files of `examples/` and `systemd/`, relative to the repository, that users copy.
fn shipped_examples() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).expect("under the root").to_string_lossy().into_owned());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    walk(&root.join("examples"), root, &mut out);
    walk(&root.join("systemd"), root, &mut out);
    out
}

#[test]
fn the_published_package_holds_licenses_changelog_and_examples_but_no_ci_or_test_scripts() {
    let Some(cargo) = cargo_bin() else {
        return;
    };
    let mut c = TestCommand::new(&cargo);
    c.args(["package", "--list", "--allow-dirty", "--package", "conjure-daemon"])
        .command()
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = c.expect_success();
    let files: Vec<&str> = out.stdout.lines().collect();
    for needed in
        ["LICENSE-MIT", "LICENSE-APACHE", "CHANGELOG.md", "README.md", "Cargo.lock", "src/lib.rs", "src/main.rs"]
    {
        assert!(files.contains(&needed), "`cargo package --list` lacks {needed}\n{out}");
    }
    for example in shipped_examples() {
        assert!(files.contains(&example.as_str()), "`cargo package --list` lacks the example {example}\n{out}");
    }
    let forbidden = [".ci/", "integration/", "benches/", "xtask/", "target/", ".cargo/"];
    for file in &files {
        assert!(
            !forbidden.iter().any(|f| file.starts_with(f)) && !file.contains("mkrootfs"),
            "`cargo package --list` ships {file}, which users do not need\n{out}"
        );
    }
}
