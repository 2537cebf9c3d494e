//! Pulling from a registry that wants bearer tokens (the Docker registry token
//! flow): the daemon trades the CRI login for a token at the registry's realm,
//! or sends a CRI `registry_token` as the bearer token itself.

use oci_client::secrets::RegistryAuth;
use tonic::Code;
use wasmrun::api::{AuthConfig, ImageSpec, PullImageRequest};

use crate::harness::*;

/// Pushes the hello fixture to the token registry as "e2e/<repo>:v1"; returns its name.
async fn push_to_token_registry(repo: &str) -> String {
    let registry = token_registry();
    let host = registry.registry.host();
    let login = RegistryAuth::Basic(registry.username.clone(), registry.password.clone());
    push_image_as(&host, &format!("e2e/{repo}"), "v1", &wasm_artifact(&fixture("hello")), &login).await;
    format!("{host}/e2e/{repo}:v1")
}

/// A daemon that may reach the token registry over plain http.
async fn daemon_for_tokens() -> Daemon {
    let host = token_registry().registry.host();
    Daemon::start_with(None, &["--insecure-registry", &host]).await
}

/// The CRI login of the token registry's user.
fn login() -> AuthConfig {
    let registry = token_registry();
    AuthConfig { username: registry.username.clone(), password: registry.password.clone(), ..Default::default() }
}

/// PullImage with `auth`, bounded so that a hanging pull fails the test.
async fn pull_with(daemon: &Daemon, image: &str, auth: Option<AuthConfig>) -> Result<String, tonic::Status> {
    let mut images = daemon.images();
    let pull = images.pull_image(PullImageRequest {
        image: Some(ImageSpec { image: image.into(), ..Default::default() }),
        auth,
        ..Default::default()
    });
    tokio::time::timeout(std::time::Duration::from_secs(120), pull)
        .await
        .unwrap_or_else(|_| panic!("PullImage {image} did not return within 120 s"))
        .map(|response| response.into_inner().image_ref)
}

async fn runs(daemon: &Daemon, image: &str) {
    let pod = Pod::run(daemon, "bearer").await;
    let config = container_config("bearer", image, &[], &[], &[]);
    let (_, status) = pod.run_to_exit(daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
}

/// A refused pull: Unauthenticated, naming the image, nothing stored, daemon up.
async fn refused(daemon: &Daemon, image: &str, result: Result<String, tonic::Status>, what: &str) {
    let status = expect_code(result, Code::Unauthenticated, what);
    assert!(status.message().contains(image), "{what}: the message does not name {image}: {status:?}");
    assert_eq!(image_status(&mut daemon.images(), image).await, None, "{what}: the image was stored");
    assert_serving(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_a_login_is_traded_for_a_token_and_the_image_runs() {
    let image = push_to_token_registry("bearer-login").await;
    let registry = token_registry();
    let daemon = daemon_for_tokens().await;
    let before = registry.tokens_issued_for("e2e/bearer-login", "pull");
    pull_with(&daemon, &image, Some(login())).await.expect("PullImage with username and password");
    assert!(
        registry.tokens_issued_for("e2e/bearer-login", "pull") > before,
        "the daemon pulled without getting a pull token for e2e/bearer-login from the token server"
    );
    assert!(image_status(&mut daemon.images(), &image).await.is_some(), "the pulled image is not listed");
    runs(&daemon, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_a_wrong_password_or_no_login_is_unauthenticated_and_stores_nothing() {
    let image = push_to_token_registry("bearer-wrong").await;
    let registry = token_registry();
    let daemon = daemon_for_tokens().await;
    let refused_before = registry.tokens_refused();
    let wrong = AuthConfig { username: registry.username.clone(), password: "wrong".into(), ..Default::default() };
    refused(&daemon, &image, pull_with(&daemon, &image, Some(wrong)).await, "a wrong password").await;
    assert!(registry.tokens_refused() > refused_before, "the token server was not asked for a token");
    refused(&daemon, &image, pull_with(&daemon, &image, None).await, "no login").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_a_registry_token_is_sent_as_the_bearer_token() {
    let image = push_to_token_registry("bearer-registry-token").await;
    let registry = token_registry();
    let daemon = daemon_for_tokens().await;
    let token = registry.issue_token("e2e/bearer-registry-token", &["pull"]);
    let issued = registry.tokens_issued_for("e2e/bearer-registry-token", "pull");
    let auth = AuthConfig { registry_token: token, ..Default::default() };
    pull_with(&daemon, &image, Some(auth)).await.expect("PullImage with a registry token");
    assert_eq!(
        registry.tokens_issued_for("e2e/bearer-registry-token", "pull"),
        issued,
        "the daemon asked the token server for a token although it was given one"
    );
    runs(&daemon, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_a_registry_token_for_another_repository_is_refused() {
    let image = push_to_token_registry("bearer-other-token").await;
    let registry = token_registry();
    let daemon = daemon_for_tokens().await;
    let token = registry.issue_token("e2e/some-other-repository", &["pull"]);
    let auth = AuthConfig { registry_token: token, ..Default::default() };
    refused(&daemon, &image, pull_with(&daemon, &image, Some(auth)).await, "a token for another repository").await;
}

/// kubelet sends each pull the pull secrets of its own pod: what one pull
/// logged in with must not let a later pull without a login through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_the_login_of_one_pull_does_not_serve_the_next() {
    let first = push_to_token_registry("bearer-isolation-a").await;
    let second = push_to_token_registry("bearer-isolation-b").await;
    let daemon = daemon_for_tokens().await;
    pull_with(&daemon, &first, Some(login())).await.expect("PullImage with username and password");
    refused(&daemon, &second, pull_with(&daemon, &second, None).await, "no login after another pull's login").await;
}

/// A wrong password in one pull must not spoil the right one of the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_a_wrong_password_does_not_stick() {
    let image = push_to_token_registry("bearer-retry").await;
    let registry = token_registry();
    let daemon = daemon_for_tokens().await;
    let wrong = AuthConfig { username: registry.username.clone(), password: "wrong".into(), ..Default::default() };
    expect_code(pull_with(&daemon, &image, Some(wrong)).await, Code::Unauthenticated, "a wrong password");
    pull_with(&daemon, &image, Some(login())).await.expect("PullImage with the right password after a wrong one");
}
