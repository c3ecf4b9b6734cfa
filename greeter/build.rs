//! Generates the gRPC code of the protos with protoc (Debian's
//! `protobuf-compiler`; `PROTOC` overrides the path).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/helloworld.proto", "proto/echo.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
