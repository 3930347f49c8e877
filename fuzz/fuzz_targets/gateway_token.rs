//! A token as a client sends it (any bytes): checked as the gateway does; the refusal's reason
//! stays printable ASCII and its `WWW-Authenticate` header one line, whatever the token holds.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgevents_gateway::fuzzing::token(data);
});
