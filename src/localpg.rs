//! Local PostgreSQL server binaries, for `pgveil demo` and the test
//! harness: where they are, and how to run them (PostgreSQL refuses to run
//! as root, so as root they run as user `postgres`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where pgveil looked, for the error message.
pub const INSTALL_HINT: &str = "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found.\n\
     Install them, for example:\n  Debian/Ubuntu: sudo apt-get install postgresql\n  \
     Fedora/RHEL:   sudo dnf install postgresql-server\n  macOS:         brew install postgresql@17\n\
     or point PG_BIN at their directory.";

/// Finds the server binaries: `PG_BIN`, `pg_config --bindir`, the highest
/// `/usr/lib/postgresql/*/bin`, or `initdb` on `PATH`.
pub fn find_server_binaries() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(bin));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for one of the server binaries, as `postgres` when `as_postgres`.
pub fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    let path = bin.join(program);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// The uid and gid of user `postgres`.
pub fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}
