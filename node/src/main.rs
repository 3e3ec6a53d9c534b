fn main() -> std::process::ExitCode {
    canopy_node::cli::main()
}
