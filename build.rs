//! Compiles the protocol with protox (pure Rust), so no system `protoc` is
//! needed, and keeps the compiled descriptors (with their comments) for the
//! hub's gRPC server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/ferry/v1/tunnel.proto", "proto/ferry/v1/management.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::Compiler::new(["proto"])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(protos)?
        .file_descriptor_set();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ferry_descriptor.bin"), fds.encode_to_vec())?;
    // The request head is boxed: every hub-to-agent frame channel allocates
    // blocks of 32 frames up front, and an unboxed head makes each frame ~250
    // bytes (about 8 KiB per open request or parked stream at the hub).
    tonic_prost_build::configure()
        .bytes(".ferry.v1")
        .boxed(".ferry.v1.HubFrame.frame.head")
        // Smaller stream buffers than tonic's default (see ferry::codec).
        .codec_path("crate::codec::FerryCodec")
        .compile_fds(fds)?;
    Ok(())
}
