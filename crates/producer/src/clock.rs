//! The wall clock, as PostgreSQL's commit times are given: Unix microseconds.

/// Now, in Unix microseconds.
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
