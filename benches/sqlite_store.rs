//! Placeholder replaced by the store bench below.
fn main() {}
