//! Rebuild when anything under `console/` changes: the console's files are compiled into the
//! binary, and a file added there is not otherwise noticed by Cargo.
fn main() {
    println!("cargo:rerun-if-changed=console");
}
