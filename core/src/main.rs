fn main() -> std::process::ExitCode {
    p2ner_core::cli::main()
}
