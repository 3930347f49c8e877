//! A request for a session's stream (any bytes as the head): the target, the session id, the
//! resume point and the token are read as the gateway reads them, and no request header value
//! can split a response header.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgevents_gateway::fuzzing::session_request(data);
});
