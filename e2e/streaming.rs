//! Exec, Attach and PortForward, which a WebAssembly guest cannot
//! support: they fail cleanly instead of pretending.

use tonic::{Code, Status};
use wasmrun::api::{AttachRequest, ExecRequest, PortForwardRequest};

use crate::harness::*;

/// Calls the three streaming RPCs on the container / pod and returns their results.
async fn call_all(rt: &mut Runtime, container_id: &str, pod_id: &str) -> Vec<(&'static str, Result<(), Status>)> {
    vec![
        (
            "Exec",
            rt.exec(ExecRequest {
                container_id: container_id.into(),
                cmd: vec!["sh".into()],
                stdout: true,
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "Attach",
            rt.attach(AttachRequest { container_id: container_id.into(), stdout: true, ..Default::default() })
                .await
                .map(drop),
        ),
        (
            "PortForward",
            rt.port_forward(PortForwardRequest { pod_sandbox_id: pod_id.into(), port: vec![8080] }).await.map(drop),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_rpcs_on_a_wasm_container_fail_precondition() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = pulled_fixture(&daemon, "sleeper", "streaming-unsupported").await;
    let pod = Pod::run(&daemon, "streaming").await;
    let config = container_config("sleeper", &image.name, &[], &[], &[]);
    let id = pod.create_and_start(&daemon, &config).await;
    wait_log_line(&pod.log_path(&config), "stdout", "sleeping").await;

    for (rpc, result) in call_all(&mut rt, &id, &pod.id).await {
        match result {
            Err(status) if status.code() == Code::FailedPrecondition => {
                assert!(status.message().contains("WebAssembly"), "{rpc}: message {:?}", status.message())
            }
            other => panic!("{rpc}: expected FailedPrecondition, got {other:?}"),
        }
    }
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_rpcs_on_unknown_ids_are_not_found() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    for (rpc, result) in call_all(&mut rt, &random_id(), &random_id()).await {
        match result {
            Err(status) if status.code() == Code::NotFound => {}
            other => panic!("{rpc}: expected NotFound, got {other:?}"),
        }
    }
    assert_serving(&daemon).await;
}
