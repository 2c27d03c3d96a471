//! `kiseki-server`: the appliance's one binary.

fn main() {
    println!("kiseki-server: not yet wired");
}
