//! A client's request head (up to the first NUL byte) and a history event body (the rest): the
//! head parsed, the query turned into a filter, the event decoded, matched and rendered.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    pgevents_gateway::fuzzing::request_and_event(head, body.get(1..).unwrap_or_default());
});
