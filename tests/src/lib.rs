//! End-to-end test package. The application's end-to-end, browser and load tests live in
//! `server/tests/` (`e2e.rs`, `browser.rs`, `load.rs`): they run the real `cggm` binary, whose path
//! cargo hands (`CARGO_BIN_EXE_cggm`) only to the package that builds it.
