//! Client-supplied text on its way to the log and to error messages.
//!
//! An id that cannot be an id (too long, or a character no id has) is
//! refused `INVALID_ARGUMENT` before it is logged or looked up; any other
//! client text reaches the log escaped (a newline cannot start a forged
//! line, an escape sequence cannot reach a terminal) and truncated, and an
//! error message quotes at most [`MAX_MESSAGE`] bytes of it.

use std::fmt::Write;

use tonic::Status;

/// The longest session id accepted: ids are 32 hex digits, after a node id
/// of at most 32 characters and a dot.
pub const MAX_ID: usize = 128;

/// The longest client text (a correlation id, a backend name) kept in a
/// log line.
pub const MAX_LOGGED: usize = 128;

/// The longest status message sent.
pub const MAX_MESSAGE: usize = 1024;

/// Whether `id` could be a session id: at most [`MAX_ID`] ASCII letters,
/// digits, `.`, `_` or `-` (ids that cannot name a session for another
/// reason are `NOT_FOUND`, as before).
pub fn plausible_id(id: &str) -> bool {
    id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Refuses a `field` that cannot be a session id.
pub fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if plausible_id(id) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "{field} is not a session id: at most {MAX_ID} letters, digits, '.', '_' or '-' (got {} bytes)",
        id.len()
    )))
}

/// `text` fit for a log line: control characters (newlines, escapes) and
/// other non-printing characters escaped, cut after `max` characters with
/// the count of what was left out.
pub fn loggable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    let mut chars = text.chars();
    for c in chars.by_ref().take(max) {
        if c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            // `\n`, `\u{1b}`: readable, and never the character itself.
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    let rest = chars.count();
    if rest > 0 {
        let _ = write!(out, "...(+{rest} chars)");
    }
    out
}

/// A status whose message is at most [`MAX_MESSAGE`] bytes: the one bound
/// on what an error can echo back of a request.
pub fn bounded(status: Status) -> Status {
    if status.message().len() <= MAX_MESSAGE {
        return status;
    }
    let message = status.message();
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let cut = format!("{}...(+{} bytes)", &message[..end], message.len() - end);
    Status::with_details_and_metadata(
        status.code(),
        cut,
        status.details().to_vec().into(),
        status.metadata().clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_plain() {
        assert!(plausible_id("0123456789abcdef0123456789abcdef"));
        assert!(plausible_id("n1.0123456789abcdef0123456789abcdef"));
        assert!(plausible_id("nope"));
        assert!(!plausible_id("a\nINFO gatehouse::audit: forged"));
        assert!(!plausible_id("\u{1b}[31mred"));
        assert!(!plausible_id(&"a".repeat(MAX_ID + 1)));
        let e = check_id("session_id", &"x".repeat(3_000_000)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().len() < 200, "{}", e.message());
    }

    #[test]
    fn logged_text_is_one_line_and_bounded() {
        let forged = "abc\nINFO gatehouse::audit: admin action=key.revoke\u{1b}[2J";
        let out = loggable(forged, MAX_LOGGED);
        assert!(!out.contains('\n') && !out.contains('\u{1b}'), "{out}");
        assert!(out.contains("\\n") && out.contains("\\u{1b}"), "{out}");
        let long = loggable(&"x".repeat(1000), 10);
        assert_eq!(long, "xxxxxxxxxx...(+990 chars)");
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let s = bounded(Status::not_found("é".repeat(2000)));
        assert!(s.message().len() < MAX_MESSAGE + 40);
        assert!(s.message().ends_with("bytes)"));
        assert_eq!(s.code(), tonic::Code::NotFound);
        let short = bounded(Status::not_found("no such session"));
        assert_eq!(short.message(), "no such session");
    }
}
