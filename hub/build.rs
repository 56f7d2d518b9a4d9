//! Compiles the hub's own protocols with protox (pure Rust, no system
//! `protoc`): the subset of etcd's v3 API the etcd store speaks (client
//! only), and the replica-to-replica `Peer` service, which reuses the
//! tunnel's frames from the root crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let etcd = ["proto/etcd/etcdserverpb/rpc.proto", "proto/etcd/mvccpb/kv.proto"];
    let peer = ["proto/ferry/peer/v1/peer.proto"];
    for p in etcd.iter().chain(&peer).chain(&["../proto/ferry/v1/tunnel.proto"]) {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds =
        protox::Compiler::new(["proto/etcd"])?.include_imports(true).open_files(etcd)?.file_descriptor_set();
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;

    // Only the peer file: the tunnel's types come from the `ferry` crate.
    let fds = protox::Compiler::new(["proto", "../proto"])?
        .include_imports(false)
        .open_files(peer)?
        .file_descriptor_set();
    tonic_prost_build::configure()
        .extern_path(".ferry.v1", "::ferry::proto::v1")
        .codec_path("::ferry::codec::FerryCodec")
        .compile_fds(fds)?;
    Ok(())
}
