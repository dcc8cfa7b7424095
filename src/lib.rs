//! The `wharf` binary as a library: `main` only parses arguments and sets up logging, so
//! integration tests can drive every command in-process through [`cli`].

pub mod cli;
