//! Schedules: pure functions from (collective, nranks, rank, count, chunking) to a [`Program`].
