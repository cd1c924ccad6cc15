//! `arca` will be the binary: the CLI (`repo`, `snapshot`, `backup`, `restore`,
//! `schedule`) and the operator (`arca server`, `arca node-agent`). It will be the only
//! place that builds the tokio runtime, installs logging and uses `anyhow`.
