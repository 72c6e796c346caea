//! Cluster admission proofs, bound to one QUIC connection. (Being built with the gossip transport.)
