//! A panic kept to the work that raised it: a bug met by one odd record or one metric becomes an
//! error for that record or metric (a dead letter with reason `internal_error`), never the end
//! of the process with the same batch replayed into the same panic after every restart.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; a panic in it is returned as its message. Whatever `f` was changing when it
/// panicked is the caller's to set aside (the callers drop or dead-letter that work).
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| match payload.downcast_ref::<&str>() {
        Some(s) => s.to_string(),
        None => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "a panic without a message".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::catch_panic;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        assert_eq!(
            catch_panic(|| -> u8 { panic!("boom at {}", 3) }),
            Err("boom at 3".to_string())
        );
        assert_eq!(
            catch_panic(|| -> u8 { std::panic::panic_any(5u8) }),
            Err("a panic without a message".to_string())
        );
    }
}
