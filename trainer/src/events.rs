//! Progress events, written as JSON lines by `cggm train` and read by the server.
