//! The `arca` binary: the CLI and the operator. It will be the only place that builds the
//! tokio runtime and installs logging.

fn main() {}
