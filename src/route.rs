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
//! **A mixed pod** is one annotated with the "smart" variants, crun's words:
//! `module.wasm.image/variant: compat-smart` or `run.oci.handler: wasm-smart`.
//! With a backing runtime it is [`Side::Mixed`]: its sandbox (pause process,
//! network namespace, CNI) is the backing runtime's, and each container goes
//! where its image belongs ([`Rules::new_container`]): a wasm image becomes
//! an in-process guest joined to that sandbox, anything else is forwarded.
//! Without one, it is a wasm pod whose Linux containers are refused.
//!
//! **A pod id** ([`Rules::pod_id`]) is the wasm side's if `Pods` runs the
//! pod, a mixed pod's if `Pods` joined it, else the backing runtime's if one
//! is configured, else the wasm side answers (NotFound, or nothing to do for
//! an idempotent stop/remove). **A container id** ([`Rules::id`]) is the wasm
//! side's if `Pods` knows it, then the same.
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
    /// Both, for a mixed pod: the backing runtime's sandbox, with wasm
    /// containers of wasmrun's in it. Returned only with a backing runtime.
    Mixed,
}

/// What the wasm side knows of a pod id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodLookup {
    /// A pod it runs.
    Runs,
    /// A mixed pod's sandbox of the backing runtime, which it joined.
    Joined,
    /// Nothing.
    Absent,
}

/// The pod annotation crun's wasm handler and compat images use.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
/// crun's runtime handler annotation.
pub const CRUN_HANDLER_ANNOTATION: &str = "run.oci.handler";

/// Whether a pod's annotations make it a mixed pod: `module.wasm.image/variant:
/// compat-smart` or `run.oci.handler: wasm-smart` (crun's "smart" variants:
/// only the containers whose image is wasm run as wasm).
pub fn is_mixed(annotations: &HashMap<String, String>) -> bool {
    annotations.get(VARIANT_ANNOTATION).is_some_and(|v| v == "compat-smart")
        || annotations.get(CRUN_HANDLER_ANNOTATION).is_some_and(|v| v == "wasm-smart")
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
        let mixed = is_mixed(annotations);
        if mixed && self.has_backing {
            return Ok(Side::Mixed);
        }
        let wasm = mixed
            || self.wasm_handlers.iter().any(|h| h == runtime_handler)
            || annotations.get(VARIANT_ANNOTATION).is_some_and(|v| v == "compat")
            || annotations.get(CRUN_HANDLER_ANNOTATION).is_some_and(|v| v == "wasm");
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

    /// Who owns a container id: `known` is whether `Pods` knows it.
    pub fn id(&self, known: bool) -> Side {
        if known || !self.has_backing { Side::Wasm } else { Side::Backing }
    }

    /// Who owns a pod id. A joined pod without a backing runtime (the
    /// config lost it since) is the wasm side's: it still stops and removes
    /// its own containers.
    pub fn pod_id(&self, lookup: PodLookup) -> Side {
        match lookup {
            PodLookup::Joined if self.has_backing => Side::Mixed,
            PodLookup::Runs | PodLookup::Joined => Side::Wasm,
            PodLookup::Absent => self.id(false),
        }
    }

    /// Where CreateContainer goes, in a pod owned by `pod` (see
    /// [`Rules::pod_id`]) that is `mixed` by its annotations, for an image
    /// the wasm side's store answers `image` for. In a mixed pod a wasm image
    /// (or an empty name, which the wasm side refuses) is the wasm side's,
    /// anything else the backing runtime's. Fails with FailedPrecondition,
    /// naming `image_name`, for an image that is not wasm in a mixed pod
    /// without a backing runtime.
    pub fn new_container(&self, pod: Side, mixed: bool, image: ImageLookup, image_name: &str) -> Result<Side> {
        match (pod, image) {
            (Side::Backing, _) => Ok(Side::Backing),
            (Side::Mixed, ImageLookup::Absent) => Ok(Side::Backing),
            (Side::Mixed, _) => Ok(Side::Wasm),
            (Side::Wasm, ImageLookup::Absent) if mixed && !self.has_backing => Err(Error::FailedPrecondition(format!(
                "CreateContainer: image {image_name:?} is not a wasm image wasmrun holds, and this mixed pod's \
                 other containers need a backing runtime (backing_endpoint), which is not configured"
            ))),
            (Side::Wasm, _) => Ok(Side::Wasm),
        }
    }

    /// Whether CreateContainer joins its pod's sandbox first: a wasm image
    /// (`image` Stored) for a pod of the backing runtime's (`pod`, see
    /// [`Rules::pod_id`]) whose `sandbox_config` is `mixed` by its
    /// annotations is a mixed pod the wasm side has not joined (see
    /// `front/mixed.rs`, `join_late`).
    pub fn joins_late(&self, pod: Side, mixed: bool, image: ImageLookup) -> bool {
        pod == Side::Backing && mixed && image == ImageLookup::Stored
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
        assert_eq!(with.pod("runc", &crun).unwrap(), Side::Mixed);
        assert_eq!(with.pod("", &none).unwrap(), Side::Backing);
        assert_eq!(with.pod("runc", &none).unwrap(), Side::Backing);

        let smart = HashMap::from([("module.wasm.image/variant".to_owned(), "compat-smart".to_owned())]);
        assert_eq!(with.pod("wasmrun", &smart).unwrap(), Side::Mixed);
        assert_eq!(with.pod("", &smart).unwrap(), Side::Mixed);
        assert_eq!(with.pod("", &crun).unwrap(), Side::Mixed);
        let crun_plain = HashMap::from([("run.oci.handler".to_owned(), "wasm".to_owned())]);
        assert_eq!(with.pod("", &crun_plain).unwrap(), Side::Wasm);

        let without = rules(false);
        assert_eq!(without.pod("runc", &smart).unwrap(), Side::Wasm);
        assert_eq!(without.pod("", &crun).unwrap(), Side::Wasm);
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
    fn who_owns_a_pod_id() {
        use PodLookup::*;
        let table = [
            ((Runs, true), Side::Wasm),
            ((Runs, false), Side::Wasm),
            ((Joined, true), Side::Mixed),
            ((Joined, false), Side::Wasm),
            ((Absent, true), Side::Backing),
            ((Absent, false), Side::Wasm),
        ];
        for ((lookup, has_backing), side) in table {
            assert_eq!(rules(has_backing).pod_id(lookup), side, "{lookup:?}, backing {has_backing}");
        }
    }

    #[test]
    fn where_a_new_container_goes() {
        use ImageLookup::*;
        // (pod side, mixed by annotation, image lookup, backing configured) → side
        let table = [
            ((Side::Mixed, true, Stored, true), Side::Wasm),
            ((Side::Mixed, true, Refused, true), Side::Wasm),
            ((Side::Mixed, true, Absent, true), Side::Backing),
            ((Side::Backing, false, Stored, true), Side::Backing),
            ((Side::Backing, false, Absent, true), Side::Backing),
            ((Side::Wasm, false, Absent, true), Side::Wasm),
            ((Side::Wasm, false, Absent, false), Side::Wasm),
            ((Side::Wasm, true, Stored, false), Side::Wasm),
            ((Side::Wasm, true, Refused, false), Side::Wasm),
        ];
        for ((pod, mixed, image, has_backing), side) in table {
            let got = rules(has_backing).new_container(pod, mixed, image, "x").unwrap();
            assert_eq!(got, side, "{pod:?} mixed {mixed} {image:?} backing {has_backing}");
        }
        let with = rules(true);
        assert!(with.joins_late(Side::Backing, true, Stored));
        assert!(!with.joins_late(Side::Backing, true, Absent));
        assert!(!with.joins_late(Side::Backing, false, Stored));
        assert!(!with.joins_late(Side::Mixed, true, Stored));
        let refused =
            rules(false).new_container(Side::Wasm, true, Absent, "docker.io/envoyproxy/envoy:v1").unwrap_err();
        assert!(
            matches!(&refused, Error::FailedPrecondition(m) if m.contains("docker.io/envoyproxy/envoy:v1")),
            "{refused}"
        );
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
