//! `weft-cni`: the CNI plugin. Attaching pods arrives in a later issue; see docs/ARCHITECTURE.md.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("weft-cni: not yet implemented");
    std::process::exit(1);
}
