//! Pieces of `weft demo` (the command itself is `cmd::demo`): named network namespaces, the
//! underlay between the demo's hosts, and ICMP echo. All of it talks to the kernel directly
//! (rtnetlink, setns, raw sockets), not through `ip` or `ping`.

pub mod icmp;
pub mod netns;
pub mod underlay;
