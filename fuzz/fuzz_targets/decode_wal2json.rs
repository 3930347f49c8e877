//! wal2json (format 2) messages (length-prefixed), decoded and assembled into events.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgevents_fuzz::decode_stream(pgevents_decode::Plugin::Wal2Json, data));
