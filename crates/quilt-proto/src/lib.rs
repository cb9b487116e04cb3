//! The quilt-runtime gRPC contract: messages, client and server generated from
//! `proto/quilt.proto`, the descriptor set that server reflection serves, and
//! [`connect`], the one way every caller reaches a runtime.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("quilt");

pub mod connect;

/// The encoded `FileDescriptorSet` of `quilt.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quilt_descriptor");
