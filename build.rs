//! Rebuilds when a migration is added or changed: refinery embeds the
//! `migrations/` directory at compile time, and cargo does not watch it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
