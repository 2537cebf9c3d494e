//! Checks of the test machinery itself: the registry serves what we push in
//! the CNCF wasm artifact layout, and the CRI log parser is strict.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_serves_pushed_wasm_artifact() {
    let image = push_bytes("harness-artifact", b"\0asm\x01\0\0\0").await;
    let host = registry().host();
    let (code, body) =
        http_get(&host, "/v2/e2e/harness-artifact/manifests/v1", Some(MANIFEST_MEDIA_TYPE)).expect("GET manifest");
    assert_eq!(code, 200, "GET manifest: {}", String::from_utf8_lossy(&body));
    assert_eq!(sha256_digest(&body), image.manifest_digest);
    let manifest: serde_json::Value = serde_json::from_slice(&body).expect("manifest JSON");
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG_MEDIA_TYPE);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], WASM_LAYER_MEDIA_TYPE);
    assert_eq!(layers[0]["size"], 8);

    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let (code, config) =
        http_get(&host, &format!("/v2/e2e/harness-artifact/blobs/{config_digest}"), None).expect("GET config");
    assert_eq!(code, 200);
    let config: serde_json::Value = serde_json::from_slice(&config).expect("config JSON");
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip1");
    assert_eq!(config["layerDigests"][0], layers[0]["digest"]);
    chrono::DateTime::parse_from_rfc3339(config["created"].as_str().unwrap()).expect("created is RFC 3339");
}

#[test]
fn log_parser_accepts_cri_lines() {
    let text = "2024-01-02T03:04:05.123456789Z stdout P abc\n\
                2024-01-02T03:04:05.2Z stderr F oops\n\
                2024-01-02T03:04:05.3Z stdout F def ghi\n\
                2024-01-02T03:04:05.4Z stdout F \n";
    let lines = parse_log(text, true);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0].tag, "P");
    assert_eq!(lines[2].content, "def ghi");
    assert_eq!(
        full_lines(&lines),
        vec![
            ("stderr".to_owned(), "oops".to_owned()),
            ("stdout".to_owned(), "abcdef ghi".to_owned()),
            ("stdout".to_owned(), String::new()),
        ]
    );
    // A trailing partial line is ignored unless the log must be complete.
    assert_eq!(parse_log("2024-01-02T03:04:05.1Z stdout F a\n2024-01", false).len(), 1);
}

#[test]
fn log_parser_rejects_malformed_lines() {
    for bad in [
        "2024-01-02T03:04:05Z stdout F no fraction",
        "2024-01-02T03:04:05.1+00:00 stdout F not UTC",
        "2024-01-02 03:04:05.1Z stdout F space",
        "2024-01-02T03:04:05.1Z stdin F bad stream",
        "2024-01-02T03:04:05.1Z stdout X bad tag",
        "2024-01-02T03:04:05.1Z stdout F",
    ] {
        let result = std::panic::catch_unwind(|| parse_log_line(bad));
        assert!(result.is_err(), "accepted {bad:?}");
    }
}

#[test]
fn fixtures_build_to_wasm_modules() {
    for name in ["hello", "exit-code", "longline", "spin", "sleeper", "trap", "files", "memhog"] {
        let wasm = fixture(name);
        assert!(wasm.starts_with(b"\0asm\x01\0\0\0"), "fixture {name} is not a wasm module");
    }
}
