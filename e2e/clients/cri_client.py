"""A CRI client on Python grpcio, as node tooling in Python writes one.

Usage: cri_client.py STUBS_DIR SOCKET IMAGE [AUTHORITY]

STUBS_DIR holds api_pb2.py and api_pb2_grpc.py, generated from
proto/api.proto by grpc_tools.protoc. The channel is
`unix://SOCKET` with grpcio's default options; when AUTHORITY is given it
is set as `grpc.default_authority` (what a client that sends the socket
path does). It pulls IMAGE, runs a pod with one container of it, waits for
the container to exit, and prints one JSON object of what it saw.
"""

import json
import sys
import time

STUBS, SOCKET, IMAGE = sys.argv[1], sys.argv[2], sys.argv[3]
AUTHORITY = sys.argv[4] if len(sys.argv) > 4 else None
sys.path.insert(0, STUBS)

import grpc  # noqa: E402
import api_pb2 as api  # noqa: E402
import api_pb2_grpc as api_grpc  # noqa: E402

options = [("grpc.default_authority", AUTHORITY)] if AUTHORITY else []
channel = grpc.insecure_channel("unix://" + SOCKET, options=options)
runtime = api_grpc.RuntimeServiceStub(channel)
images = api_grpc.ImageServiceStub(channel)
TIMEOUT = 60

seen = {}
version = runtime.Version(api.VersionRequest(), timeout=TIMEOUT)
seen["runtime_name"] = version.runtime_name
seen["runtime_api_version"] = version.runtime_api_version
status = runtime.Status(api.StatusRequest(), timeout=TIMEOUT)
seen["conditions"] = {c.type: c.status for c in status.status.conditions}
seen["image_ref"] = images.PullImage(
    api.PullImageRequest(image=api.ImageSpec(image=IMAGE)), timeout=TIMEOUT
).image_ref

pod_config = api.PodSandboxConfig(
    metadata=api.PodSandboxMetadata(name="python-client", uid="python-uid", namespace="default"),
    labels={"io.kubernetes.pod.uid": "python-uid"},
    # The host's network: the test daemon has no CNI configuration.
    linux=api.LinuxPodSandboxConfig(
        security_context=api.LinuxSandboxSecurityContext(
            namespace_options=api.NamespaceOption(network=api.NamespaceMode.Value("NODE"))
        )
    ),
)
pod = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=pod_config), timeout=TIMEOUT).pod_sandbox_id
container = runtime.CreateContainer(
    api.CreateContainerRequest(
        pod_sandbox_id=pod,
        config=api.ContainerConfig(
            metadata=api.ContainerMetadata(name="hello"),
            image=api.ImageSpec(image=IMAGE),
            args=["python", "client"],
        ),
        sandbox_config=pod_config,
    ),
    timeout=TIMEOUT,
).container_id
runtime.StartContainer(api.StartContainerRequest(container_id=container), timeout=TIMEOUT)
deadline = time.monotonic() + TIMEOUT
while True:
    state = runtime.ContainerStatus(api.ContainerStatusRequest(container_id=container), timeout=TIMEOUT).status
    if state.state == api.CONTAINER_EXITED or time.monotonic() > deadline:
        break
    time.sleep(0.02)
seen["container_state"] = api.ContainerState.Name(state.state)
seen["exit_code"] = state.exit_code
seen["reason"] = state.reason
try:
    runtime.ContainerStatus(api.ContainerStatusRequest(container_id="no-such-container"), timeout=TIMEOUT)
    seen["missing"] = "OK"
except grpc.RpcError as error:
    seen["missing"] = error.code().name
try:
    # An id of 10,000 characters, percent-encoded in the status message to
    # 60,000 bytes if echoed whole: grpcio would see RESOURCE_EXHAUSTED
    # instead of the status (its metadata limit is 16 KiB).
    runtime.ContainerStatus(api.ContainerStatusRequest(container_id="\u00e9" * 10000), timeout=TIMEOUT)
    seen["huge_missing"] = "OK"
except grpc.RpcError as error:
    seen["huge_missing"] = error.code().name
runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=TIMEOUT)
runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=TIMEOUT)
seen["pods_left"] = len(runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=TIMEOUT).items)
print(json.dumps(seen))
