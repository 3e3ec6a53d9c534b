fn main() { println!("{}", canopy_node::version()); }
