//! The real Odoo 18 facts beside the checkout (`../shared/odoo18`).
//!
//! Tests that use them call [`odoo18_dir`]; when the directory is absent they
//! print a clear SKIP line naming the path on a developer's machine and fail
//! under `CI=true` — the facts are never copied into the project.

use std::path::PathBuf;

/// `../shared/odoo18` relative to the workspace root, or `MEDALLION_ODOO18_DIR`.
pub fn odoo18_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MEDALLION_ODOO18_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/odoo18"));
    if dir.join("base.dump").exists() {
        Some(dir)
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        // CI has the facts beside the clone: their absence is a failure there.
        panic!(
            "real Odoo 18 facts not found at {} under CI=true (set MEDALLION_ODOO18_DIR)",
            dir.display()
        );
    } else {
        eprintln!(
            "SKIP: real Odoo 18 facts not found at {} (set MEDALLION_ODOO18_DIR)",
            dir.display()
        );
        None
    }
}
