//! Per-registry settings: a registry behind TLS with a CA of its own, and
//! mirrors tried before the registry an image names.

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use tonic::Code;

use crate::harness::*;

fn config_file(name: &str, toml: &str) -> String {
    let path = scratch_dir(name).join("config.toml");
    std::fs::write(&path, toml).expect("write config");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_its_own_ca_pulls_when_the_ca_is_configured() {
    let tls = tls_registry();
    let host = tls.registry.host();
    let client = ClientConfig {
        protocol: ClientProtocol::Https,
        extra_root_certificates: vec![Certificate {
            encoding: CertificateEncoding::Pem,
            data: tls.ca_pem.clone().into_bytes(),
        }],
        ..Default::default()
    };
    let parts = wasm_artifact(&fixture("hello"));
    push_image_with(client, &host, "e2e/tls", "v1", &parts, &RegistryAuth::Anonymous).await;
    let image = format!("{host}/e2e/tls:v1");

    // Without the CA, https to this registry fails: a clear error, not a hang.
    let daemon = Daemon::start().await;
    let status = expect_code(try_pull(&daemon, Some(&image)).await, Code::Unavailable, "a registry with an unknown CA");
    assert!(status.message().contains(&image), "{status:?}");
    drop(daemon);

    let config =
        config_file("tls-config", &format!("[registries.\"{host}\"]\nca_file = \"{}\"\n", tls.ca_file.display()));
    let daemon = Daemon::start_with(None, &["--config", &config]).await;
    pull(&daemon, &image).await;
    let pod = Pod::run(&daemon, "tls").await;
    let (_, status) = pod.run_to_exit(&daemon, &container_config("tls", &image, &[], &[], &[])).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_serves_an_image_whose_registry_is_down() {
    let mirror = registry().host();
    let upstream = format!("127.0.0.1:{}", free_port());
    push_fixture("hello", "mirrored").await;
    let config = config_file(
        "mirror-config",
        &format!("insecure_registries = [\"{upstream}\"]\n[registries.\"{upstream}\"]\nmirrors = [\"{mirror}\"]\n"),
    );
    let daemon = Daemon::start_with(None, &["--config", &config]).await;
    let image = format!("{upstream}/e2e/mirrored:v1");
    pull(&daemon, &image).await;
    let status = image_status(&mut daemon.images(), &image).await.expect("pulled through the mirror");
    assert!(status.repo_tags.contains(&image), "the image keeps the name it was pulled by: {status:#?}");
    let pod = Pod::run(&daemon, "mirrored").await;
    let (_, status) = pod.run_to_exit(&daemon, &container_config("mirrored", &image, &[], &[], &[])).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");

    // A tag no mirror has falls through to the registry itself, which is down.
    let missing = format!("{upstream}/e2e/mirrored:absent");
    expect_code(try_pull(&daemon, Some(&missing)).await, Code::Unavailable, "neither mirror nor registry");
}
