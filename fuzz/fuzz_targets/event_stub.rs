//! An event body made to fit a limit (--oversize stub): the first two bytes are the limit;
//! whatever comes out fits, and is JSON whenever the input was.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limit = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let body = &data[2..];
    if let Ok(stubbed) = pgevents_producer::stub(body, limit) {
        assert!(stubbed.body.len() <= limit, "{} bytes above the limit {limit}", stubbed.body.len());
        if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
            let reparsed = serde_json::from_slice::<serde_json::Value>(&stubbed.body);
            assert!(reparsed.is_ok(), "a stubbed event is not JSON any more: {reparsed:?}");
        }
    }
});
