//! The parts of an HTTP/1.1 answer that both the upgrade (refusals) and the HTTP transports
//! (event streams, polls) write.

/// The reason phrase of the statuses the gateway answers with.
pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Lets a page on another origin (the demo page on the admin port, say) read the answer. The
/// origin has already passed the allowlist, so it is echoed back.
pub fn cors(out: &mut String, origin: Option<&str>) {
    if let Some(o) = origin {
        out.push_str("Access-Control-Allow-Origin: ");
        out.push_str(o);
        out.push_str("\r\nVary: Origin\r\n");
    }
}
