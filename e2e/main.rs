//! End-to-end tests of wasmrun: each test starts its own daemon (the real
//! binary, on a unix socket in a scratch directory) and drives it over CRI v1
//! like kubelet does, pulling wasm artifacts from a local registry shared by
//! the whole test process.
//!
//! Requires /usr/bin/docker-registry and the wasm32-wasip1 Rust target (the
//! guest programs in e2e/fixtures are built on first use).

mod harness;

mod auth;
mod bad_input;
mod bearer;
mod containers;
mod crash;
mod daemon;
mod formats;
mod harness_checks;
mod images;
mod interop;
mod pods;
mod registries;
mod resources;
mod streaming;
