//! QUIC transport and admission for the gossip core.
