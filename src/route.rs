//! Which side serves a call: wasmrun's own wasm runtime, or the backing
//! runtime. This file is the one statement of the rules; [`crate::front`]
//! applies them to each RPC, and nothing else decides.
//!
//! **A new pod** ([`Rules::pod`]) is wasm when any of these holds:
//! - its `runtime_handler` is one of `wasm_handlers` (default `wasmrun`);
//! - its annotation `module.wasm.image/variant` is `compat` or `compat-smart`
//!   (the annotation of compat images, which crun's wasm handler also reads);
//! - its annotation `run.oci.handler` is `wasm` or `wasm-smart` (crun's).
//!
//! Otherwise it goes to the backing runtime (an empty handler is the backing
//! runtime's default). Without a backing runtime, a pod that names no handler
//! runs as wasm (crictl `runp` names none), and a pod that names another
//! handler is refused.
//!
//! **A pod or container id** ([`Rules::id`]) is the wasm side's if `Pods`
//! knows it; else the backing runtime's, if one is configured; else the wasm
//! side answers (NotFound, or nothing to do for an idempotent stop/remove).
//!
//! **An image name** ([`Rules::image`], for ImageStatus and RemoveImage) is
//! the wasm side's if its store holds it or refuses the name (an empty one);
//! else the backing runtime's, if configured; else the wasm side answers (no
//! image, which ImageStatus reports as an empty answer).
//!
//! **A pull** goes to the wasm side first; [`Rules::failed_pull`] says who
//! answers when it fails: a backing runtime, if configured, pulls an image
//! that is not wasm or that no source gave wasmrun; anything else is the wasm
//! side's error.
//!
//! **Runtime-wide settings** ([`Rules::runtime_settings`]: RuntimeConfig,
//! UpdateRuntimeConfig) are the backing runtime's when there is one: its pods
//! have cgroups and a pod CIDR, wasm guests have neither.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Who serves a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// wasmrun's own pods, containers and images.
    Wasm,
    /// The backing runtime (containerd), which exists when this is returned.
    Backing,
}

/// What wasmrun's image store says of an image name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageLookup {
    /// The store holds it (by id, tag or digest reference).
    Stored,
    /// The store does not hold it.
    Absent,
    /// The store refuses the name (`Images::status` fails: an empty name).
    Refused,
}

/// The rules, with the two facts they depend on.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Runtime handlers that are wasm (`wasm_handlers` of the config).
    pub wasm_handlers: Vec<String>,
    /// Whether a backing runtime is configured (`backing_endpoint`).
    pub has_backing: bool,
}

impl Rules {
    /// Where a new pod runs (RunPodSandbox), from its `runtime_handler` and
    /// the annotations of its `PodSandboxConfig`. Fails with
    /// FailedPrecondition for a handler that is not wasm when no backing
    /// runtime is configured.
    pub fn pod(&self, runtime_handler: &str, annotations: &HashMap<String, String>) -> Result<Side> {
        let annotated =
            |key: &str, values: [&str; 2]| annotations.get(key).is_some_and(|v| values.contains(&v.as_str()));
        let wasm = self.wasm_handlers.iter().any(|h| h == runtime_handler)
            || annotated("module.wasm.image/variant", ["compat", "compat-smart"])
            || annotated("run.oci.handler", ["wasm", "wasm-smart"]);
        match (wasm, self.has_backing) {
            (true, _) => Ok(Side::Wasm),
            (false, true) => Ok(Side::Backing),
            (false, false) if runtime_handler.is_empty() => Ok(Side::Wasm),
            (false, false) => Err(Error::FailedPrecondition(format!(
                "RunPodSandbox: runtime handler {runtime_handler:?} is not a wasm handler ({}), and no backing \
                 runtime is configured (backing_endpoint) to run other pods",
                self.wasm_handlers.join(", ")
            ))),
        }
    }

    /// Who owns a pod or container id: `known` is whether `Pods` knows it.
    pub fn id(&self, known: bool) -> Side {
        if known || !self.has_backing { Side::Wasm } else { Side::Backing }
    }

    /// Who answers ImageStatus and RemoveImage for an image name.
    pub fn image(&self, lookup: ImageLookup) -> Side {
        match lookup {
            ImageLookup::Stored | ImageLookup::Refused => Side::Wasm,
            ImageLookup::Absent => self.id(false),
        }
    }

    /// Who answers a PullImage that the wasm side failed with `error`.
    pub fn failed_pull(&self, error: &Error) -> Side {
        match error {
            Error::NotWasm(_) | Error::Unfetchable(_) if self.has_backing => Side::Backing,
            _ => Side::Wasm,
        }
    }

    /// Who answers RuntimeConfig and UpdateRuntimeConfig.
    pub fn runtime_settings(&self) -> Side {
        if self.has_backing { Side::Backing } else { Side::Wasm }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(has_backing: bool) -> Rules {
        Rules { wasm_handlers: vec!["wasmrun".into()], has_backing }
    }

    #[test]
    fn where_a_new_pod_goes() {
        let none = HashMap::new();
        let compat = HashMap::from([("module.wasm.image/variant".to_owned(), "compat".to_owned())]);
        let crun = HashMap::from([("run.oci.handler".to_owned(), "wasm-smart".to_owned())]);
        let with = rules(true);
        assert_eq!(with.pod("wasmrun", &none).unwrap(), Side::Wasm);
        assert_eq!(with.pod("", &compat).unwrap(), Side::Wasm);
        assert_eq!(with.pod("runc", &crun).unwrap(), Side::Wasm);
        assert_eq!(with.pod("", &none).unwrap(), Side::Backing);
        assert_eq!(with.pod("runc", &none).unwrap(), Side::Backing);

        let without = rules(false);
        assert_eq!(without.pod("", &none).unwrap(), Side::Wasm);
        assert_eq!(without.pod("wasmrun", &none).unwrap(), Side::Wasm);
        assert_eq!(without.pod("runc", &compat).unwrap(), Side::Wasm);
        let refused = without.pod("runc", &none).unwrap_err();
        assert!(
            matches!(&refused, Error::FailedPrecondition(m) if m.contains("runc") && m.contains("no backing runtime")),
            "{refused}"
        );
    }

    #[test]
    fn who_owns_an_id() {
        // (known to Pods, backing configured) → side
        let table = [
            ((true, true), Side::Wasm),
            ((true, false), Side::Wasm),
            ((false, true), Side::Backing),
            ((false, false), Side::Wasm),
        ];
        for ((known, has_backing), side) in table {
            assert_eq!(rules(has_backing).id(known), side, "known {known}, backing {has_backing}");
        }
    }

    #[test]
    fn who_owns_an_image() {
        use ImageLookup::*;
        let table = [
            ((Stored, true), Side::Wasm),
            ((Stored, false), Side::Wasm),
            ((Refused, true), Side::Wasm),
            ((Refused, false), Side::Wasm),
            ((Absent, true), Side::Backing),
            ((Absent, false), Side::Wasm),
        ];
        for ((lookup, has_backing), side) in table {
            assert_eq!(rules(has_backing).image(lookup), side, "{lookup:?}, backing {has_backing}");
        }
    }

    #[test]
    fn who_answers_a_failed_pull() {
        let not_wasm = || Error::NotWasm("a Linux image".into());
        let unfetchable = || Error::Unfetchable(Box::new(Error::Unavailable("no source answered".into())));
        let other = || Error::Unauthenticated("bad credentials".into());
        let table = [
            ((not_wasm(), true), Side::Backing),
            ((unfetchable(), true), Side::Backing),
            ((other(), true), Side::Wasm),
            ((not_wasm(), false), Side::Wasm),
            ((unfetchable(), false), Side::Wasm),
            ((other(), false), Side::Wasm),
        ];
        for ((error, has_backing), side) in table {
            assert_eq!(rules(has_backing).failed_pull(&error), side, "{error:?}, backing {has_backing}");
        }
    }

    #[test]
    fn who_answers_runtime_settings() {
        assert_eq!(rules(true).runtime_settings(), Side::Backing);
        assert_eq!(rules(false).runtime_settings(), Side::Wasm);
    }
}
