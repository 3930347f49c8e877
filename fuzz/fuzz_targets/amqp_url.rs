//! RabbitMQ URLs: parsing with the standard query parameters; the password is always masked
//! when the URL is shown.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(url) = text.parse::<pgevents_amqp::AmqpUrl>() {
        let shown = url.to_string();
        let userinfo = format!("://{}:***@", url.user);
        assert!(shown.contains(&userinfo), "the password is not masked: {shown}");
        let _ = url.check();
    }
});
