//! The messages `#[guest_sdk::job]` gives for functions that cannot be jobs: each case
//! in `tests/ui/` must fail to build with exactly the message next to it.

#[test]
fn job_attribute_rejects_wrong_signatures() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
