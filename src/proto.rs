//! Generated gRPC types and services (`proto/quarry.proto`).
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("quarry.v1");
