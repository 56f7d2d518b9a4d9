//! Compiles the protocol with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/ferry/v1/tunnel.proto", "proto/ferry/v1/management.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
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
