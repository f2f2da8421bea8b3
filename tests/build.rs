//! Link arguments for the test binaries.

fn main() {
    // Some tests link two plugin crates as rlibs to speak their wire
    // formats, and each plugin exports abi_stable's root-module symbols for
    // `dlopen`. The test binaries never look those symbols up, but whether
    // both object files get pulled into the link depends on the codegen-unit
    // layout (with `CARGO_INCREMENTAL=0` they do), and the link then fails on
    // the duplicates. Either definition is as good as the other here.
    println!("cargo:rustc-link-arg-tests=-Wl,--allow-multiple-definition");
    println!("cargo:rustc-link-arg-benches=-Wl,--allow-multiple-definition");
}
