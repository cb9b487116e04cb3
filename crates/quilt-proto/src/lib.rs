//! The quilt-runtime gRPC contract: messages, client and server generated from
//! `proto/quilt.proto`, and the descriptor set that server reflection serves.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("quilt");

/// The encoded `FileDescriptorSet` of `quilt.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quilt_descriptor");
