//! Pulling from a registry that wants a login: the CRI `AuthConfig` in each
//! of its forms, default credentials from `auth_file`, and clear refusals.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use tonic::Code;
use wasmrun::api::{AuthConfig, ImageSpec, PullImageRequest};

use crate::harness::*;

/// Pushes the hello fixture to the registry with a login; returns its name.
async fn push_private(repo: &str) -> String {
    let private = auth_registry();
    let host = private.registry.host();
    let login = RegistryAuth::Basic(private.username.clone(), private.password.clone());
    push_image_as(&host, &format!("e2e/{repo}"), "v1", &wasm_artifact(&fixture("hello")), &login).await;
    format!("{host}/e2e/{repo}:v1")
}

/// A daemon that may reach the registry with a login over plain http.
async fn daemon_for_private(extra: &[&str]) -> Daemon {
    let host = auth_registry().registry.host();
    let mut args = vec!["--insecure-registry", &host];
    args.extend_from_slice(extra);
    Daemon::start_with(None, &args).await
}

async fn pull_with(daemon: &Daemon, image: &str, auth: AuthConfig) -> Result<String, tonic::Status> {
    daemon
        .images()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: image.into(), ..Default::default() }),
            auth: Some(auth),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().image_ref)
}

async fn runs(daemon: &Daemon, image: &str) {
    let pod = Pod::run(daemon, "private").await;
    let config = container_config("private", image, &[], &[], &[]);
    let (_, status) = pod.run_to_exit(daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_and_password_pull_from_a_registry_with_a_login() {
    let image = push_private("auth-password").await;
    let daemon = daemon_for_private(&[]).await;
    let private = auth_registry();
    let auth =
        AuthConfig { username: private.username.clone(), password: private.password.clone(), ..Default::default() };
    pull_with(&daemon, &image, auth).await.expect("PullImage with username and password");
    runs(&daemon, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_field_pulls_like_a_docker_config_entry() {
    let image = push_private("auth-field").await;
    let daemon = daemon_for_private(&[]).await;
    let private = auth_registry();
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", private.username, private.password));
    pull_with(&daemon, &image, AuthConfig { auth: encoded, ..Default::default() }).await.expect("PullImage with auth");
    runs(&daemon, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_no_login_is_unauthenticated_and_stores_nothing() {
    let image = push_private("auth-wrong").await;
    let daemon = daemon_for_private(&[]).await;
    let private = auth_registry();
    let wrong = AuthConfig { username: private.username.clone(), password: "wrong".into(), ..Default::default() };
    let status = expect_code(pull_with(&daemon, &image, wrong).await, Code::Unauthenticated, "a wrong password");
    assert!(status.message().contains(&image), "{status:?}");
    let status = expect_code(try_pull(&daemon, Some(&image)).await, Code::Unauthenticated, "no login");
    assert!(status.message().contains(&image), "{status:?}");
    assert_eq!(image_status(&mut daemon.images(), &image).await, None);
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_file_gives_default_credentials() {
    let image = push_private("auth-file").await;
    let private = auth_registry();
    let file = scratch_dir("auth-file").join("config.json");
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", private.username, private.password));
    let config = serde_json::json!({"auths": {private.registry.host(): {"auth": encoded}}});
    std::fs::write(&file, serde_json::to_vec(&config).unwrap()).expect("write auth file");
    let daemon = daemon_for_private(&["--auth-file", &file.display().to_string()]).await;
    try_pull(&daemon, Some(&image)).await.expect("PullImage with credentials from auth_file");
    runs(&daemon, &image).await;
}
