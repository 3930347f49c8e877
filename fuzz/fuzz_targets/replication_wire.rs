//! Bytes from the server on a replication connection: backend message framing, and each
//! CopyData read as WAL data or a keepalive.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgevents_replication::fuzzing::server_bytes(data);
});
