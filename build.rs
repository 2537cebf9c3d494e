//! Compiles the CRI v1 API (proto/api.proto) into tonic server and client code.
//! protox parses the .proto in pure Rust, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let descriptors = protox::compile(["api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Encoded by hand from entries each container and pod keeps (src/cri/wire.rs).
        .extern_path(".runtime.v1.ListContainersResponse", "crate::cri::wire::ListContainersResponse")
        .extern_path(".runtime.v1.ListPodSandboxResponse", "crate::cri::wire::ListPodSandboxResponse")
        .compile_fds(descriptors)?;
    Ok(())
}
