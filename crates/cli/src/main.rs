//! The `morphogen` command line.
fn main() {}
