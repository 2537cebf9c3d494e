//! End-to-end tests of wasmrun: each test starts its own daemon (the real
//! binary, on a unix socket in a scratch directory) and drives it over CRI v1
//! like kubelet does, pulling wasm artifacts from a local registry shared by
//! the whole test process.
//!
//! Requires what `.ci/run` installs: docker-registry, buildah, containerd,
//! runc, gcc with a static libc, oras (Python), wkg, the wasm32-wasip1 and
//! wasm32-wasip2 Rust targets, and clang, lld and wasi-libc (the guest
//! programs in e2e/fixtures, e2e/fixtures-p2, e2e/fixtures-http and
//! e2e/fixtures-c are built on first use; the hand-written ones in
//! e2e/fixtures-wat are compiled from text by the tests).

mod harness;

mod auth;
mod bad_input;
mod bearer;
mod clients;
mod components;
mod containerd;
mod containers;
mod crash;
mod daemon;
mod events;
mod exec;
mod formats;
mod forwarding;
mod harness_checks;
mod http;
mod images;
mod interop;
mod isolation;
mod limits;
mod mirrors;
mod mixed;
mod network;
mod pods;
mod registries;
mod resources;
mod restart;
mod rootfs;
mod streaming;
mod termination;
