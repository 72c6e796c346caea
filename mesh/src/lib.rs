//! The WireGuard datapath, routes, bridge and firewall of a weft node. See docs/ARCHITECTURE.md.
