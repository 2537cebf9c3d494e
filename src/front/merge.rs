//! Calls both sides answer, merged into one answer: the lists, the event
//! stream, Status, ImageFsInfo. The wasm side's part comes first and whole;
//! the backing runtime's is added when it answers in time. A backing runtime
//! that is down or slow must not stop wasm calls: it costs at most
//! [`BACKING_LIST_LIMIT`] (Status: [`BACKING_STATUS_LIMIT`]), and a warning
//! in the log says what was left out.
//!
//! ListContainers and ListPodSandbox keep the wasm side's entries as the
//! bytes it encoded (`cri::wire`); the backing runtime's entries are
//! appended as messages.

use std::future::Future;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::api;
use crate::api::image_service_server::ImageService;
use crate::api::runtime_service_server::RuntimeService;
use crate::backing::Backing;
use crate::cri::{EventStream, Facade};

/// How long a merged list waits for the backing runtime's part: a slow
/// backing runtime must not slow the listing of wasm objects much.
pub const BACKING_LIST_LIMIT: Duration = Duration::from_secs(5);

/// How long Status waits for the backing runtime's, so that a slow backing
/// runtime cannot hold up kubelet's health checks.
pub const BACKING_STATUS_LIMIT: Duration = Duration::from_secs(2);

type Reply<T> = Result<Response<T>, Status>;

/// The wasm side's answer `ours` with the backing runtime's answer to `call`
/// added by `add`, both asked at once. An error of the wasm side is the
/// answer; an error or no answer in time from the backing runtime leaves its
/// part out, with a warning naming `what` (the RPC).
async fn both<R, X, Theirs>(
    what: &str,
    ours: impl Future<Output = Reply<R>>,
    backing: Option<&Backing>,
    call: impl FnOnce(Backing) -> Theirs,
    add: impl FnOnce(&mut R, X),
) -> Reply<R>
where
    Theirs: Future<Output = Reply<X>>,
{
    let (ours, theirs) = tokio::join!(ours, backing_part(what, backing, call));
    let mut ours = ours?;
    if let Some(theirs) = theirs {
        add(ours.get_mut(), theirs);
    }
    Ok(ours)
}

/// The backing runtime's answer to `call`, or `None` (with a warning) when
/// there is no backing runtime, or it fails, or it does not answer in time.
async fn backing_part<X, Theirs>(
    what: &str,
    backing: Option<&Backing>,
    call: impl FnOnce(Backing) -> Theirs,
) -> Option<X>
where
    Theirs: Future<Output = Reply<X>>,
{
    let backing = backing?.clone();
    let endpoint = backing.endpoint.clone();
    let answer = tokio::time::timeout(BACKING_LIST_LIMIT, call(backing))
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")));
    match answer {
        Ok(answer) => Some(answer.into_inner()),
        Err(status) => {
            tracing::warn!(%endpoint, code = ?status.code(), error = %status.message(), "{what}: the backing runtime did not answer; listing wasm objects only");
            None
        }
    }
}

/// ListPodSandbox: our pods (pre-encoded), then the backing runtime's.
pub async fn list_pod_sandbox(
    wasm: &Facade,
    backing: Option<&Backing>,
    request: Request<api::ListPodSandboxRequest>,
) -> Reply<api::ListPodSandboxResponse> {
    let forwarded = request.get_ref().clone();
    both(
        "ListPodSandbox",
        wasm.list_pod_sandbox(request),
        backing,
        |backing| async move { backing.runtime().list_pod_sandbox(forwarded).await },
        |ours, theirs: api::ListPodSandboxResponse| ours.items.extend(theirs.items),
    )
    .await
}

/// ListContainers: our containers (pre-encoded), then the backing runtime's.
pub async fn list_containers(
    wasm: &Facade,
    backing: Option<&Backing>,
    request: Request<api::ListContainersRequest>,
) -> Reply<api::ListContainersResponse> {
    let forwarded = request.get_ref().clone();
    both(
        "ListContainers",
        wasm.list_containers(request),
        backing,
        |backing| async move { backing.runtime().list_containers(forwarded).await },
        |ours, theirs: api::ListContainersResponse| ours.containers.extend(theirs.containers),
    )
    .await
}

pub async fn list_container_stats(
    wasm: &Facade,
    backing: Option<&Backing>,
    request: Request<api::ListContainerStatsRequest>,
) -> Reply<api::ListContainerStatsResponse> {
    let forwarded = request.get_ref().clone();
    both(
        "ListContainerStats",
        wasm.list_container_stats(request),
        backing,
        |backing| async move { backing.runtime().list_container_stats(forwarded).await },
        |ours, theirs: api::ListContainerStatsResponse| ours.stats.extend(theirs.stats),
    )
    .await
}

pub async fn list_pod_sandbox_stats(
    wasm: &Facade,
    backing: Option<&Backing>,
    request: Request<api::ListPodSandboxStatsRequest>,
) -> Reply<api::ListPodSandboxStatsResponse> {
    let forwarded = request.get_ref().clone();
    let mut merged = both(
        "ListPodSandboxStats",
        wasm.list_pod_sandbox_stats(request),
        backing,
        |backing| async move { backing.runtime().list_pod_sandbox_stats(forwarded).await },
        |ours, theirs: api::ListPodSandboxStatsResponse| ours.stats.extend(theirs.stats),
    )
    .await?;
    super::mixed::add_joined_pod_stats(wasm, &mut merged.get_mut().stats).await;
    Ok(merged)
}

pub async fn list_images(
    wasm: &Facade,
    backing: Option<&Backing>,
    request: Request<api::ListImagesRequest>,
) -> Reply<api::ListImagesResponse> {
    let forwarded = request.get_ref().clone();
    both(
        "ListImages",
        wasm.list_images(request),
        backing,
        |backing| async move { backing.images().list_images(forwarded).await },
        |ours, theirs: api::ListImagesResponse| ours.images.extend(theirs.images),
    )
    .await
}

/// ImageFsInfo: our image store's filesystem, then the backing runtime's
/// image and container filesystems.
pub async fn image_fs_info(
    wasm: &Facade,
    backing: Option<&Backing>,
    request: Request<api::ImageFsInfoRequest>,
) -> Reply<api::ImageFsInfoResponse> {
    let forwarded = *request.get_ref();
    both(
        "ImageFsInfo",
        wasm.image_fs_info(request),
        backing,
        |backing| async move { backing.images().image_fs_info(forwarded).await },
        |ours, theirs: api::ImageFsInfoResponse| {
            ours.image_filesystems.extend(theirs.image_filesystems);
            ours.container_filesystems.extend(theirs.container_filesystems);
        },
    )
    .await
}

/// Status: our conditions (RuntimeReady, NetworkReady), each made false when
/// the backing runtime's of the same type is false, with its reason and
/// message; RuntimeReady false (`BackingRuntimeUnavailable`) when the
/// backing runtime does not answer. kubelet reads a false NetworkReady as a
/// NotReady node, as it would from containerd alone. The runtime handlers:
/// the wasm ones, then each of the backing runtime's (its default, named
/// empty, among them) whose name is not a wasm one; none of the backing
/// runtime's when it does not answer, or is older than the field (CRI 1.30).
pub async fn status(
    wasm: &Facade,
    backing: Option<&Backing>,
    request: Request<api::StatusRequest>,
) -> Reply<api::StatusResponse> {
    let mut ours = wasm.status(request).await?;
    let Some(backing) = backing else {
        return Ok(ours);
    };
    let asked =
        tokio::time::timeout(BACKING_STATUS_LIMIT, backing.runtime().status(api::StatusRequest { verbose: false }))
            .await;
    let answer = ours.get_mut();
    // A pod naming no handler goes to the backing runtime: the default is its to list.
    answer.runtime_handlers.retain(|handler| !handler.name.is_empty());
    let conditions = &mut answer.status.get_or_insert_with(Default::default).conditions;
    match asked {
        Ok(Ok(theirs)) => {
            let theirs = theirs.into_inner();
            merge_conditions(conditions, &theirs.status.map(|s| s.conditions).unwrap_or_default(), &backing.endpoint);
            let handlers = &mut answer.runtime_handlers;
            let wasm: Vec<String> = handlers.iter().map(|handler| handler.name.clone()).collect();
            handlers.extend(theirs.runtime_handlers.into_iter().filter(|handler| !wasm.contains(&handler.name)));
        }
        Ok(Err(status)) => backing_down(conditions, &backing.endpoint, status.message()),
        Err(_) => backing_down(conditions, &backing.endpoint, "no answer to Status in time"),
    }
    Ok(ours)
}

/// Each of `ours` made false when the backing runtime's condition of the
/// same type is false, with its reason and its message (which says whose it is).
fn merge_conditions(ours: &mut [api::RuntimeCondition], theirs: &[api::RuntimeCondition], endpoint: &str) {
    for ours in ours {
        if let Some(their) = theirs.iter().find(|c| c.r#type == ours.r#type && !c.status) {
            ours.status = false;
            ours.reason = their.reason.clone();
            ours.message = format!("backing runtime {endpoint}: {}", their.message);
        }
    }
}

/// Makes RuntimeReady false: the backing runtime cannot run its pods.
fn backing_down(conditions: &mut [api::RuntimeCondition], endpoint: &str, why: &str) {
    if let Some(runtime_ready) = conditions.iter_mut().find(|c| c.r#type == "RuntimeReady") {
        runtime_ready.status = false;
        runtime_ready.reason = "BackingRuntimeUnavailable".into();
        runtime_ready.message = format!("backing runtime {endpoint}: {why}; wasm pods are not affected");
    }
}

/// GetContainerEvents: our events and the backing runtime's, as each comes.
/// The backing stream failing or ending (containerd restarting) does not end
/// ours; without the backing stream (it refused), ours alone, with a warning.
pub async fn container_events(
    wasm: &Facade,
    backing: Option<&Backing>,
    request: Request<api::GetEventsRequest>,
) -> Reply<EventStream> {
    let forwarded = *request.get_ref();
    let ours = wasm.get_container_events(request).await?.into_inner();
    let Some(backing) = backing else {
        return Ok(Response::new(ours));
    };
    match backing.runtime().get_container_events(forwarded).await {
        Ok(theirs) => {
            let endpoint = backing.endpoint.clone();
            let theirs = theirs.into_inner().filter_map(move |event| match event {
                Ok(event) => Some(Ok(event)),
                Err(status) => {
                    tracing::warn!(%endpoint, error = %status.message(), "the backing runtime's event stream failed");
                    None
                }
            });
            Ok(Response::new(Box::pin(ours.merge(theirs))))
        }
        Err(status) => {
            tracing::warn!(endpoint = %backing.endpoint, error = %status.message(), "no events from the backing runtime");
            Ok(Response::new(ours))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(kind: &str) -> api::RuntimeCondition {
        api::RuntimeCondition { r#type: kind.into(), status: true, ..Default::default() }
    }

    fn ours() -> Vec<api::RuntimeCondition> {
        vec![ready("RuntimeReady"), ready("NetworkReady")]
    }

    #[test]
    fn a_false_condition_of_the_backing_runtime_makes_ours_false() {
        let mut conditions = ours();
        let theirs = [
            ready("RuntimeReady"),
            api::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: "cni config uninitialized".into(),
            },
        ];
        merge_conditions(&mut conditions, &theirs, "unix:///run/containerd/containerd.sock");
        assert_eq!(conditions[0], ready("RuntimeReady"));
        assert!(!conditions[1].status);
        assert_eq!(conditions[1].reason, "NetworkPluginNotReady");
        assert_eq!(
            conditions[1].message,
            "backing runtime unix:///run/containerd/containerd.sock: cni config uninitialized"
        );
    }

    #[test]
    fn a_backing_runtime_that_does_not_answer_makes_runtime_ready_false() {
        let mut conditions = ours();
        backing_down(&mut conditions, "unix:///c.sock", "connection refused");
        assert!(!conditions[0].status);
        assert_eq!(conditions[0].reason, "BackingRuntimeUnavailable");
        assert!(conditions[0].message.contains("connection refused"), "{:?}", conditions[0]);
        assert_eq!(conditions[1], ready("NetworkReady"));
    }

    async fn theirs(_backing: Backing) -> Reply<Vec<&'static str>> {
        Ok(Response::new(vec!["theirs"]))
    }

    fn add(ours: &mut Vec<&'static str>, theirs: Vec<&'static str>) {
        ours.extend(theirs);
    }

    #[tokio::test]
    async fn without_a_backing_runtime_a_list_is_ours() {
        let ours = async { Ok(Response::new(vec!["ours"])) };
        let merged = both("List", ours, None, theirs, add).await.unwrap();
        assert_eq!(merged.into_inner(), ["ours"]);
    }

    #[tokio::test]
    async fn the_backing_runtimes_part_comes_after_ours() {
        let backing = Backing::new("unix:///nonexistent/backing.sock", Duration::from_secs(1)).unwrap();
        let ours = async { Ok(Response::new(vec!["ours"])) };
        let merged = both("List", ours, Some(&backing), theirs, add).await.unwrap();
        assert_eq!(merged.into_inner(), ["ours", "theirs"]);
    }

    #[tokio::test]
    async fn a_backing_runtime_that_is_down_leaves_its_part_out() {
        let backing = Backing::new("unix:///nonexistent/backing.sock", Duration::from_secs(1)).unwrap();
        let ours = async { Ok(Response::new(vec!["ours"])) };
        let call = |backing: Backing| async move {
            backing.runtime().list_containers(api::ListContainersRequest::default()).await?;
            Ok(Response::new(vec!["theirs"]))
        };
        let merged = both("List", ours, Some(&backing), call, add).await.unwrap();
        assert_eq!(merged.into_inner(), ["ours"]);
    }

    #[tokio::test]
    async fn an_error_of_ours_is_the_answer() {
        let ours = async { Err::<Response<Vec<&str>>, _>(Status::invalid_argument("bad filter")) };
        let backing = Backing::new("unix:///nonexistent/backing.sock", Duration::from_secs(1)).unwrap();
        let error = both("List", ours, Some(&backing), theirs, add).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }
}
