//! The front: the CRI service wasmrun serves. It owns every routing decision
//! and nothing else: each call goes either to the wasm side
//! ([`crate::cri::Facade`], which knows nothing of containerd) or to the
//! backing runtime's client ([`crate::backing::Backing`]), by the rules of
//! [`crate::route`]; calls that both sides answer are merged by [`merge`].
//!
//! Where each RPC goes (the rule, then the file that applies it):
//!
//! | RPC | goes to | where |
//! |---|---|---|
//! | RunPodSandbox | the new-pod rule, `Rules::pod` (a refused handler fails here); a mixed pod's: `mixed.rs` | `runtime.rs` |
//! | StopPodSandbox, RemovePodSandbox, PodSandboxStatus, PodSandboxStats, PortForward | the owner of `pod_sandbox_id`, `Rules::pod_id`; a mixed pod's: `mixed.rs` | `runtime.rs` |
//! | CreateContainer | the owner of `pod_sandbox_id`; in a mixed pod, the owner of the image, `Rules::new_container` (a mixed pod not joined yet is joined first, `Rules::joins_late`) | `runtime.rs` |
//! | StartContainer, StopContainer, RemoveContainer, ContainerStatus, UpdateContainerResources, ReopenContainerLog, ContainerStats, ExecSync, Exec, Attach | the owner of `container_id`, `Rules::id` | `runtime.rs` |
//! | RuntimeConfig, UpdateRuntimeConfig | the backing runtime if configured, `Rules::runtime_settings` | `runtime.rs` |
//! | Version, CheckpointContainer, ListMetricDescriptors, ListPodSandboxMetrics | the wasm side only | `runtime.rs` |
//! | Status | both: the backing runtime's conditions merged into ours, its runtime handlers after ours | `merge.rs` |
//! | ListPodSandbox, ListContainers, ListContainerStats, ListPodSandboxStats | both: ours, then theirs appended (a mixed pod's stats: theirs with its wasm containers' added) | `merge.rs` |
//! | GetContainerEvents | both: the two streams merged | `merge.rs` |
//! | PullImage | the wasm side; on `NotWasm`/`Unfetchable`, the backing runtime, `Rules::failed_pull` | `images.rs` |
//! | ImageStatus, RemoveImage | the owner of the image name, `Rules::image` | `images.rs` |
//! | ListImages, ImageFsInfo | both: ours, then theirs appended | `merge.rs` |
//!
//! Adding a CRI method: its handler on the wasm side (`src/cri/`), and here
//! one line in the trait impl, `route!(self, runtime.new_method(request), by
//! container_id)` (or whichever rule applies), or a function in `merge.rs`
//! if both sides answer.
//!
//! A forwarded call's answer is the backing runtime's, its code kept and its
//! message prefixed with the backing endpoint ([`Backing::status`]); errors
//! of the wasm side become statuses in one place, `cri/status.rs`.

mod images;
pub mod merge;
mod mixed;
mod runtime;

use tonic::Status;

use crate::api;
use crate::backing::Backing;
use crate::cri::{Facade, Parts};
use crate::route::{ImageLookup, PodLookup, Rules, Side};

/// The CRI service on the socket: `RuntimeService` and `ImageService`, each
/// call routed to the wasm side or to the backing runtime.
pub struct Front {
    wasm: Facade,
    rules: Rules,
    /// The runtime for everything that is not wasm, when configured.
    backing: Option<Backing>,
}

/// Who a call goes to, once decided.
enum Owner<'a> {
    Wasm,
    Backing(&'a Backing),
    /// A mixed pod: calls that are not the sandbox's alone are in `mixed.rs`;
    /// the rest are forwarded.
    Mixed(&'a Backing),
}

impl Front {
    /// The front of the wasm side made of `parts`, and of `backing` if one
    /// is configured; the rules take the wasm handlers from `parts.config`.
    pub fn new(parts: Parts, backing: Option<Backing>) -> Self {
        let rules = Rules { wasm_handlers: parts.config.wasm_handlers.clone(), has_backing: backing.is_some() };
        Self { wasm: Facade::new(parts), rules, backing }
    }

    /// The side a rule chose. The rules choose the backing runtime only when
    /// one is configured; the error is for a rule that would not.
    fn to(&self, side: Side) -> Result<Owner<'_>, Status> {
        match (side, &self.backing) {
            (Side::Wasm, _) => Ok(Owner::Wasm),
            (Side::Backing, Some(backing)) => Ok(Owner::Backing(backing)),
            (Side::Mixed, Some(backing)) => Ok(Owner::Mixed(backing)),
            (Side::Backing | Side::Mixed, None) => Err(Status::failed_precondition(
                "this is not a wasm object, and no backing runtime is configured (backing_endpoint)",
            )),
        }
    }

    /// Where a new pod runs. A request without a config goes to the wasm
    /// side, which says it is required.
    fn new_pod_owner(&self, request: &api::RunPodSandboxRequest) -> Result<Owner<'_>, Status> {
        match &request.config {
            Some(config) => self.to(self.rules.pod(&request.runtime_handler, &config.annotations)?),
            None => Ok(Owner::Wasm),
        }
    }

    fn pod_owner(&self, id: &str) -> Result<Owner<'_>, Status> {
        self.to(self.pod_side(id))
    }

    fn pod_side(&self, id: &str) -> Side {
        self.rules.pod_id(pod_lookup(self.wasm.parts().pods.pod(id).ok().as_deref()))
    }

    /// Where CreateContainer goes, and the backing runtime when its pod's
    /// sandbox must be joined first (`Rules::joins_late`): the owner of its
    /// pod; in a mixed pod, the owner of its image (`Rules::new_container`).
    /// Whether the pod is mixed is read from its annotations as the wasm
    /// side keeps them, or, for a pod it does not know, as kubelet sends
    /// them in `sandbox_config`. One lookup of the pod and one of the image.
    fn new_container_owner(
        &self,
        request: &api::CreateContainerRequest,
    ) -> Result<(Owner<'_>, Option<&Backing>), Status> {
        let pod = self.wasm.parts().pods.pod(&request.pod_sandbox_id).ok();
        let pod_side = self.rules.pod_id(pod_lookup(pod.as_deref()));
        let annotations = match (&pod, &request.sandbox_config) {
            (Some(pod), _) => Some(&pod.config.annotations),
            (None, config) => config.as_ref().map(|config| &config.annotations),
        };
        let mixed = annotations.is_some_and(crate::route::is_mixed);
        let image = request.config.as_ref().and_then(|config| config.image.as_ref());
        let lookup = self.image_lookup(image);
        if self.rules.joins_late(pod_side, mixed, lookup) {
            return Ok((Owner::Wasm, self.backing.as_ref()));
        }
        let image_name = image.map_or("", |spec| spec.image.as_str());
        Ok((self.to(self.rules.new_container(pod_side, mixed, lookup, image_name)?)?, None))
    }

    fn container_owner(&self, id: &str) -> Result<Owner<'_>, Status> {
        self.to(self.rules.id(self.wasm.parts().pods.container(id).is_ok()))
    }

    /// The owner of the image named in a request's `image` field.
    fn image_owner(&self, image: Option<&api::ImageSpec>) -> Result<Owner<'_>, Status> {
        self.to(self.rules.image(self.image_lookup(image)))
    }

    /// What the wasm side's store says of the image a request names.
    fn image_lookup(&self, image: Option<&api::ImageSpec>) -> ImageLookup {
        let name = image.map_or("", |spec| spec.image.as_str());
        match self.wasm.parts().images.status(name) {
            Ok(Some(_)) => ImageLookup::Stored,
            Ok(None) => ImageLookup::Absent,
            Err(_) => ImageLookup::Refused,
        }
    }

    fn runtime_settings_owner(&self) -> Result<Owner<'_>, Status> {
        self.to(self.rules.runtime_settings())
    }
}

/// What the wasm side knows of a pod it found (`Some`) or did not.
fn pod_lookup(pod: Option<&crate::pods::Sandbox>) -> PodLookup {
    match pod {
        Some(pod) if pod.joined.is_some() => PodLookup::Joined,
        Some(_) => PodLookup::Runs,
        None => PodLookup::Absent,
    }
}

/// Sends a call to the side that owns it and returns that side's answer:
/// `route!(self, runtime.start_container(request), by container_id)`.
///
/// - `by container_id`, `by pod_sandbox_id`: the owner of the id in that
///   field of the request (`Rules::id`, `Rules::pod_id`; a mixed pod's call
///   is forwarded: calls that need both sides match `Owner::Mixed` first);
/// - `by image`: the owner of the image named in the `image` field (`Rules::image`);
/// - `by runtime_settings`: `Rules::runtime_settings`;
/// - `to wasm`: the wasm side, never forwarded;
/// - `@send self, owner, runtime.method(request)`: an owner the caller has
///   decided already (RunPodSandbox, CreateContainer, and the pod calls that
///   treat a mixed pod apart: `runtime.rs`).
///
/// `runtime` or `images` names the backing runtime's client; the method has
/// the same name on both sides, both generated from the CRI proto.
macro_rules! route {
    (@send $self:ident, $owner:expr, $client:ident . $method:ident ($request:ident)) => {
        match $owner {
            $crate::front::Owner::Wasm => $self.wasm.$method($request).await,
            $crate::front::Owner::Backing(backing) | $crate::front::Owner::Mixed(backing) => {
                backing.$client().$method($request.into_inner()).await.map_err(|s| backing.status(s))
            }
        }
    };
    ($self:ident, $client:ident . $method:ident ($request:ident), to wasm) => {
        $self.wasm.$method($request).await
    };
    ($self:ident, $client:ident . $method:ident ($request:ident), by container_id) => {
        route!(@send $self, $self.container_owner(&$request.get_ref().container_id)?, $client.$method($request))
    };
    ($self:ident, $client:ident . $method:ident ($request:ident), by pod_sandbox_id) => {
        route!(@send $self, $self.pod_owner(&$request.get_ref().pod_sandbox_id)?, $client.$method($request))
    };
    ($self:ident, $client:ident . $method:ident ($request:ident), by image) => {
        route!(@send $self, $self.image_owner($request.get_ref().image.as_ref())?, $client.$method($request))
    };
    ($self:ident, $client:ident . $method:ident ($request:ident), by runtime_settings) => {
        route!(@send $self, $self.runtime_settings_owner()?, $client.$method($request))
    };
}
use route;
