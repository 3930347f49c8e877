//! pgoutput messages (length-prefixed), decoded and assembled into events as the producer does.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgevents_fuzz::decode_stream(pgevents_decode::Plugin::PgOutput, data));
