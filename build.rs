//! Records the wgpu version this build resolved (from Cargo.lock), so the
//! bench harness reports the dependency's real version rather than a
//! hand-written one.

use std::path::{Path, PathBuf};

/// The first Cargo.lock at or above `dir`.
fn find_lock(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
}

/// The version of package `name` in a Cargo.lock's text.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(v.trim_end_matches('"').to_string());
        }
    }
    None
}

fn main() {
    let dirs = ["CARGO_MANIFEST_DIR", "OUT_DIR"].map(|v| std::env::var_os(v).map(PathBuf::from));
    let lock = dirs.iter().flatten().find_map(|d| find_lock(d));
    let version = lock
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| locked_version(&text, "wgpu"))
        .unwrap_or_else(|| "unknown (no Cargo.lock found)".to_string());
    if let Some(p) = &lock {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=XATTN_WGPU_VERSION={version}");
}
