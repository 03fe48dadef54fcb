//! Links: one per peer pair, RDMA-style.
