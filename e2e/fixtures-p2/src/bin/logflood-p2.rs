//! Fixture `logflood-p2`: the WASI 0.2 build of e2e/fixtures' `logflood`
//! (the same source, included), which floods `/dev/termination-log` and
//! tries to create files beside it.
#[path = "../../../fixtures/src/bin/logflood.rs"]
mod logflood;

fn main() {
    logflood::main()
}
