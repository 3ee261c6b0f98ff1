//! Every input in the fuzz corpora (`fuzz/corpus/TARGET/`) goes through its parser again on
//! every test run: what the fuzzers found once stays fixed. The fuzzers themselves run in
//! `fuzz/` (cargo-fuzz, nightly); `tests/run.sh` runs each briefly when cargo-fuzz is there.

use std::path::PathBuf;

fn replay(target: &str, parse: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| parse(&data));
        assert!(outcome.is_ok(), "{target}: {} panics", path.display());
        count += 1;
    }
    assert!(count > 0, "{target}: empty corpus");
}

#[test]
fn token_corpus() {
    replay("token", portcullis::fuzz::token);
}

#[test]
fn introspection_corpus() {
    replay("introspection", portcullis::fuzz::introspection);
}

#[test]
fn route_corpus() {
    replay("route", portcullis::fuzz::route);
}

#[test]
fn websocket_corpus() {
    replay("websocket", portcullis::fuzz::websocket);
}

#[test]
fn config_corpus() {
    replay("config", portcullis::fuzz::config);
}

#[test]
fn apisix_corpus() {
    replay("apisix", portcullis::fuzz::apisix);
}
