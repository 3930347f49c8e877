//! An action template, parameters and an event (NUL-separated JSON texts), rendered as body,
//! URL and header, and redacted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\0');
    let (template, parameters, event) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or("{}"), parts.next().unwrap_or("null"));
    pgevents_actions::fuzzing::template(template, parameters, event);
});
